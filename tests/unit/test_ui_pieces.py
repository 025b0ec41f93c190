"""The pieces a data scientist looks at: the Airflow home's config, progress in task logs, the gate
report's HTML and the evaluation plots."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from lightbox.settings import load_settings


def test_the_airflow_home_has_no_examples_and_listens_on_loopback_off_the_serving_port(tmp_path) -> None:
    from lightbox.adapters import airflow_runner

    s = load_settings(state_dir=tmp_path)
    env = airflow_runner.airflow_env(s)
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == "127.0.0.1"
    assert int(env["AIRFLOW__API__PORT"]) not in {s.serve_port, 8793, 8794, 8974}
    ui = airflow_runner.ui_env(s)
    assert ui["AIRFLOW__API__BASE_URL"] == airflow_runner.ui_url() == "http://127.0.0.1:8280"
    # The log servers would bind every interface: the scheduler and triggerer never start them.
    commands = airflow_runner.ui_commands()
    assert set(commands) == {"api-server", "scheduler", "dag-processor", "triggerer"}
    for name in ("scheduler", "triggerer"):
        assert "--skip-serve-logs" in commands[name]
    assert airflow_runner.password_file(s).parent == s.airflow_home_path


def test_progress_logs_at_info_under_airflow(monkeypatch, caplog) -> None:
    from lightbox import progress as progress_mod

    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "lightbox_data")
    assert not progress_mod.in_terminal()
    with caplog.at_level(logging.INFO, logger="lightbox.progress"):
        assert list(progress_mod.progress(range(5), desc="render")) == [0, 1, 2, 3, 4]
        with progress_mod.progress(total=3, desc="features") as bar:
            bar.update(2)
            bar.update()
    records = [r for r in caplog.records if r.name == "lightbox.progress"]
    assert {r.levelno for r in records} == {logging.INFO}
    assert [r.getMessage().split(" (")[0] for r in records] == ["render: 5/5", "features: 3/3"]


def test_progress_is_a_bar_in_a_terminal(monkeypatch) -> None:
    from tqdm import tqdm

    from lightbox import progress as progress_mod

    monkeypatch.delenv("AIRFLOW_CTX_DAG_ID", raising=False)
    monkeypatch.setattr(progress_mod, "in_terminal", lambda: True)
    bar = progress_mod.progress(total=2, desc="x", disable=True)
    assert isinstance(bar, tqdm)
    bar.close()


def _preds() -> pd.DataFrame:
    # Two sources on the synthetic grid (a pristine image, then levels of blur); tags "dog" and "cat",
    # "cat" with no positives: its PR curve cannot be drawn but it must still be named.
    rows = []
    for g, base in (("src-a", 0.9), ("src-b", 0.7)):
        rows.append({"group": g, "kind": "none", "level": 0, "score_unit": base, "true_unit": 1.0})
        for level in (1, 2, 3):
            rows.append(
                {"group": g, "kind": "blur", "level": level, "score_unit": base - 0.2 * level,
                 "true_unit": 1.0 - 0.25 * level}
            )  # fmt: skip
    df = pd.DataFrame(rows)
    df["tags"] = ["dog" if i % 2 else "" for i in range(len(df))]
    df["p:dog"] = np.linspace(0.1, 0.9, len(df))
    df["p:cat"] = np.linspace(0.05, 0.3, len(df))
    return df


def test_the_gate_report_is_html_with_inline_plots() -> None:
    from pipelines.gates import GateCheck, GateVerdict, ModelLabels
    from pipelines.report import render_html
    from pipelines.validate_model import GateReport

    report = GateReport(
        "m", "4", GateVerdict([GateCheck("golden.score_mae", 0.1, 0.25, "<=")], ["a <b>note</b>"]),
        {"golden.srocc.blur": 0.8}, {}, "abc", None, "2026-01-01",
        labels=ModelLabels(("dog", "cat"), (1.0, 10.0), "rating"), preds=_preds(),
    )  # fmt: skip
    page = render_html(report)
    assert "<pre>" not in page and "# Gates" not in page and "| check |" not in page
    assert "<h1>Gates for m v4: PASSED</h1>" in page
    assert "<table>" in page and "<td>golden.score_mae</td>" in page
    assert "&lt;b&gt;note&lt;/b&gt;" in page  # user text is shown, never interpreted
    assert page.count('<img alt="') == 5 and 'src="data:image/png;base64,' in page


def test_pr_curves_name_every_tag_and_say_which_have_no_positives() -> None:
    from training import plots

    probs = np.array([[0.9, 0.2], [0.1, 0.4], [0.8, 0.1]])
    labels = np.array([[1, 0], [0, 0], [1, 0]], dtype=float)
    ax = plots.pr_curves(probs, labels, ["dog", "cat"]).axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[0].startswith("dog (AP") and texts[1] == "cat (no positives in this split)"
    assert "1 of 2 tags have no positives" in ax.get_title()
    plots.plt.close("all")


def test_calibration_shows_the_count_per_bin_and_ladders_have_a_legend() -> None:
    from training import plots

    probs = np.array([[0.05], [0.15], [0.95], [0.92]])
    labels = np.array([[0.0], [0.0], [1.0], [1.0]])
    ax = plots.calibration(probs, labels, 0.05).axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["n=1", "n=1", "n=2"]
    fig = plots.ladders(
        {"blur": {"a": [0.9, 0.5], "b": [0.8, 0.4]}, "noise": {"a": [0.9, 0.6], "b": [0.8, 0.3]}}
    )
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]
    plots.plt.close("all")


@pytest.mark.parametrize("dag_file", ["lightbox_data", "lightbox_train", "lightbox_promote"])
def test_every_dag_and_param_is_described(dag_file: str) -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(f"dags/{dag_file}.py").read_text())
    keywords = {k.arg for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords}
    assert "description" in keywords
    params = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Param"]
    assert all(any(k.arg == "description" for k in p.keywords) for p in params)
