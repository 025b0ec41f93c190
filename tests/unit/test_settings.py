from pathlib import Path

import pytest
from pydantic import ValidationError

from lightbox.settings import CODE_ROOT, Settings, redacted, settings_env


def test_embedded_defaults_live_under_one_state_folder(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path)
    assert s.state == tmp_path / ".lightbox"
    assert s.tracking_uri == f"sqlite:///{tmp_path / '.lightbox' / 'mlflow.db'}"
    assert s.dvc_remote == str(tmp_path / ".lightbox" / "dvc-remote")
    assert s.feast_online_path.startswith(str(tmp_path / ".lightbox"))
    assert s.airflow_home_path == tmp_path / ".lightbox" / "airflow"
    assert s.feast_repo_path == CODE_ROOT / "features"


def test_environment_replaces_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIGHTBOX_MLFLOW_TRACKING_URI", "postgresql://u@127.0.0.1/mlflow")
    monkeypatch.setenv("LIGHTBOX_DVC_REMOTE_URL", "s3://bucket/data")
    monkeypatch.setenv("LIGHTBOX_SERVE_MAX_BATCH_SIZE", "64")
    s = Settings(project_dir=tmp_path)
    assert s.tracking_uri == "postgresql://u@127.0.0.1/mlflow"
    assert s.dvc_remote == "s3://bucket/data"
    assert s.serve_max_batch_size == 64


def test_unknown_and_invalid_values_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no_such_setting"):
        Settings(project_dir=tmp_path, no_such_setting=1)
    with pytest.raises(ValidationError, match="serve_port"):
        Settings(project_dir=tmp_path, serve_port=0)


def test_settings_env_round_trips_explicit_fields(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path, tune_trials=7, use_gpu=False, gate_min_srocc=0.25)
    env = settings_env(s)
    assert env["LIGHTBOX_PROJECT_DIR"] == str(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    again = Settings()
    assert (again.project_dir, again.tune_trials, again.use_gpu, again.gate_min_srocc) == (
        tmp_path,
        7,
        False,
        0.25,
    )


def test_display_masks_passwords_but_subprocesses_get_them(tmp_path: Path) -> None:
    s = Settings(
        project_dir=tmp_path,
        queue_url="amqp://lightbox:s3cret@rabbit:5672/%2F",
        results_dsn="postgresql://scorer:hunter2@pg/results",
        feast_redis="redis:6379,password=r3dis,ssl=true",
        serve_admin_token="tok",
    )
    shown = str(redacted(s))
    for secret in ("s3cret", "hunter2", "r3dis", "'tok'"):
        assert secret not in shown
    assert redacted(s)["queue_url"] == "amqp://lightbox:***@rabbit:5672/%2F"
    assert settings_env(s)["LIGHTBOX_RESULTS_DSN"] == "postgresql://scorer:hunter2@pg/results"


def test_served_models_default_to_the_one_champion(tmp_path) -> None:
    assert Settings(project_dir=tmp_path).served_models == [("lightbox", "champion")]
    several = Settings(project_dir=tmp_path, serve_models=" pets@champion, places@challenger")
    assert several.served_models == [("pets", "champion"), ("places", "challenger")]


@pytest.mark.parametrize("bad", ["pets", "pets@", "@champion", "pets@a@b", "pets@x,,places@y", "a@x,a@y"])
def test_a_bad_model_list_is_refused_with_the_entry(tmp_path, bad: str) -> None:
    with pytest.raises(ValueError, match="NAME@ALIAS|named twice"):
        Settings(project_dir=tmp_path, serve_models=bad)
