"""Settings typos and out-of-range values are refused at the entry point, one line each, never ignored."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lightbox.cli import app
from lightbox.settings import NOT_SETTINGS, Settings, SettingsError, load_settings, setting_names


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Only what each test sets: the runner's own LIGHTBOX_* variables would add lines.
    for name in list(os.environ):
        if name.upper().startswith("LIGHTBOX_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LIGHTBOX_PROJECT_DIR", str(tmp_path))


@pytest.mark.parametrize(
    ("variable", "hint"),
    [
        ("LIGHTBOX_SERVE_MAX_QUEU", "did you mean LIGHTBOX_SERVE_MAX_QUEUE?"),
        ("lightbox_gate_min_sroc", "did you mean LIGHTBOX_GATE_MIN_SROCC?"),  # read case-insensitively
        ("LIGHTBOX_MLFLOW_TRACKING_URL", "did you mean LIGHTBOX_MLFLOW_TRACKING_URI?"),
        ("LIGHTBOX_FOO", "the settings are the fields of lightbox/settings.py"),
    ],
)
def test_an_unknown_variable_is_named_with_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, hint: str
) -> None:
    monkeypatch.setenv(variable, "1")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == f"{variable}: unknown setting; {hint}"


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        # A floor or ceiling outside the metric's own range passes (or fails) every model.
        ("GATE_MIN_SROCC", "-5", "must be >= -1 (score SROCC floor)"),
        ("GATE_GOLDEN_MIN_SROCC", "1.5", "must be <= 1 (golden SROCC floor)"),
        ("GATE_MAX_MAE", "0", "must be > 0 (score MAE ceiling, a fraction of the score range)"),
        ("GATE_GOLDEN_MAX_MAE", "1.5", "must be <= 1 (golden MAE ceiling, a fraction of the score range)"),
        ("GATE_MIN_MAP", "2", "must be <= 1 (tag mAP floor)"),
        ("GATE_GOLDEN_MIN_TAG_AP", "-0.1", "must be >= 0 (AP floor for every tag with positives)"),
        ("GATE_GOLDEN_MAX_ECE", "nan", "must be a finite number (tag calibration ceiling)"),
        ("GATE_REGRESSION_TOLERANCE", "3", "must be <= 1 (allowed drop from the champion per metric)"),
        # Times: finite and positive.
        ("SERVE_MAX_WAIT_MS", "inf", "must be a finite number (batch fill wait)"),
        ("SERVE_MAX_LATENCY_MS", "0", "must be > 0 (admission latency budget)"),
        ("SERVE_MAX_LATENCY_MS", "1e9", "must be <= 600000 (admission latency budget)"),
        ("GATE_MAX_BATCH_LATENCY_MS", "-1", "must be > 0 (serving-fitness latency ceiling)"),
        ("CONSUME_MAX_WAIT_S", "inf", "must be a finite number (max wait to fill a batch)"),
        ("SERVE_RELOAD_INTERVAL_S", "-1", "must be >= 0 (alias polling; 0: off)"),
        # Counts, seeds, types.
        ("TUNE_SEED", "-1", "must be >= 0"),
        ("RAY_NUM_CPUS", "0", "must be >= 1 (None: every core)"),
        ("SERVE_PORT", "http", "must be an integer"),
        ("USE_GPU", "maybe", "must be true or false"),
        ("GATE_BEHAVIOUR", "always", "must be one of 'auto', 'on' or 'off'"),
        # URLs and names the stack would refuse deep inside (DVC's config loader, MLflow's registry).
        (
            "DVC_REMOTE_URL",
            "ftp://x/y",
            "the ftp:// scheme is not supported; use s3://bucket/prefix or a local folder",
        ),
        (
            "CHALLENGER_ALIAS",
            "latest",
            "alias 'latest' is reserved by MLflow ('latest' is always the newest version, 'v<N>' version N): "
            "choose another name",
        ),
    ],
)
def test_a_value_out_of_bounds_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, why: str
) -> None:
    monkeypatch.setenv(f"LIGHTBOX_{name}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == f"LIGHTBOX_{name}={value}: {why}"


def test_every_problem_is_listed_and_secrets_stay_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTBOX_SERVE_MAX_QUEU", "10")
    monkeypatch.setenv("LIGHTBOX_RESULTS_TABLE", "bad-name")
    monkeypatch.setenv("LIGHTBOX_QUEUE_DELIVERY_LIMIT", "0")
    with pytest.raises(SettingsError) as caught:
        load_settings(serve_port=0)
    lines = str(caught.value).splitlines()
    assert len(lines) == 4, lines
    assert lines[0].startswith("LIGHTBOX_SERVE_MAX_QUEU: unknown setting")
    assert "serve_port=0: must be >= 1" in lines  # an override is named as the code passed it
    assert "LIGHTBOX_QUEUE_DELIVERY_LIMIT=0: must be >= 1 (redeliveries before dead-lettering)" in lines

    monkeypatch.delenv("LIGHTBOX_SERVE_MAX_QUEU")
    monkeypatch.delenv("LIGHTBOX_RESULTS_TABLE")
    monkeypatch.delenv("LIGHTBOX_QUEUE_DELIVERY_LIMIT")
    monkeypatch.setenv("LIGHTBOX_SERVE_ADMIN_TOKEN", "s3cret")
    monkeypatch.setenv("LIGHTBOX_RESULTS_DSN", "postgresql://u:hunter2@pg/results")
    monkeypatch.setenv("LIGHTBOX_SPLIT_VALIDATION_FRACTION", "0.5")
    monkeypatch.setenv("LIGHTBOX_SPLIT_TEST_FRACTION", "0.5")
    with pytest.raises(SettingsError, match="nothing left to train on") as caught:
        load_settings()
    assert "s3cret" not in str(caught.value) and "hunter2" not in str(caught.value)


def test_variables_lightbox_sets_itself_are_not_typos(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What Settings.feast_env exports into the environment, the CLI's --by, the services tests' servers.
    for name in Settings(project_dir=tmp_path).feast_env():
        assert name in NOT_SETTINGS or name in setting_names(), name
    for name in NOT_SETTINGS:
        monkeypatch.setenv(name, "x")
    assert load_settings().project_dir == tmp_path


def test_the_cli_prints_the_line_in_red_and_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTBOX_GATE_MIN_SROCC", "-5")
    result = CliRunner().invoke(app, ["settings"], color=True)
    assert result.exit_code == 2
    assert "\x1b[31m" in result.stderr  # red
    assert "LIGHTBOX_GATE_MIN_SROCC=-5: must be >= -1 (score SROCC floor)" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
