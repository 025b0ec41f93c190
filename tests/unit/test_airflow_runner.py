import re

import pytest

from lightbox.adapters.airflow_runner import task_errors, task_event

LOG = """\
2026-11-23T09:47:07.006797Z [error    ] Task failed with exception     [task] loc=task_runner.py:1639
Traceback (most recent call last):
  File "/work/main/dags/lightbox_train.py", line 48, in promote
    raise AirflowFailException(str(exc)) from exc
airflow.sdk.exceptions.AirflowFailException: lightbox v1 failed its gates, not promoted to @champion:
  test_score_srocc = 0.4000 (needs >= 0.5)
  test_score_mae = 0.5067 (needs <= 0.25)
2026-11-23T09:47:07.007915Z [info     ] ::group::Post Execute          [task] loc=task_runner.py:1640
DagRun failed
"""


def test_task_errors_keep_the_verdict_and_its_reasons() -> None:
    assert task_errors(LOG) == [
        "lightbox v1 failed its gates, not promoted to "
        "@champion:\n  test_score_srocc = 0.4000 (needs >= 0.5)\n  test_score_mae = 0.5067 (needs <= 0.25)"
    ]


CHAINED = """\
Traceback (most recent call last):
  File "/work/main/pipelines/promote.py", line 151, in gate
pipelines.promote.GateFailed: lightbox v1 failed its gates, not promoted to @champion:
  test_score_srocc = 0.4000 (needs >= 0.5)

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/work/main/dags/lightbox_promote.py", line 64, in gates
airflow.sdk.exceptions.AirflowFailException: lightbox v1 failed its gates, not promoted to @champion:
  test_score_srocc = 0.4000 (needs >= 0.5)
"""


def test_a_verdict_reraised_by_airflow_is_said_once() -> None:
    """The probe's gate failure printed twice (the cause, then the AirflowFailException with the same
    words): one entry, the first."""
    assert task_errors(CHAINED) == [
        "pipelines.promote.GateFailed: lightbox v1 failed its gates, not promoted to @champion:\n"
        "  test_score_srocc = 0.4000 (needs >= 0.5)"
    ]


@pytest.mark.parametrize(
    "line",
    [
        "lightbox.source_tree.SourceNotFound: /tmp/nope/shoot is neither a folder nor a file",
        "lightbox.adapters.dvc_repo.NoDatasetVersion: no dataset version yet: run lightbox_data first",
        "pipelines.train.NotTrainable: the validation split is empty",
    ],
)
def test_lightbox_errors_named_without_error_are_found(line: str) -> None:
    """These had been missed (the pattern wanted Error/Exception/Failed in the class name), so the
    CLI printed the last 60 log lines with the line buried in a traceback."""
    log = f'Traceback (most recent call last):\n  File "x.py", line 1, in f\n{line}\nDagRun failed\n'
    assert task_errors(log) == [line]


def test_no_exception_gives_nothing() -> None:
    assert task_errors("2026-11-23 [info] all good\nDagRun failed\n") == []


def test_task_events_are_read_from_dags_test_lines() -> None:
    start = "2026-11-23T09:46:37Z [info ] [DAG TEST] starting task_id=train map_index=-1 [airflow.sdk]"
    end = "2026-11-23T09:47:06Z [info ] [DAG TEST] end task task_id=train map_index=-1 [airflow.sdk]"
    assert task_event(start) == ("start", "train")
    assert task_event(end) == ("end", "train")
    assert task_event("2026-11-23T09:47:06Z [info ] Task instance state updated") is None


def test_a_dag_runs_conf_is_checked_before_any_run(tmp_path) -> None:  # noqa: ANN001
    from lightbox.adapters.airflow_runner import BadConf, dag_params, parse_conf
    from lightbox.settings import CODE_ROOT

    assert {"source", "score_column", "append"} <= dag_params(CODE_ROOT / "dags" / "lightbox_data.py")
    assert parse_conf("lightbox_data", '{"source": "/photos", "append": true}') == {
        "source": "/photos",
        "append": True,
    }
    assert parse_conf("lightbox_train", None) is None
    for conf, said in [
        ('{"sorce": "/photos"}', "no param sorce (did you mean source?)"),
        ("{bad json", "--conf is not JSON"),
        ("[1]", "must be a JSON object"),
    ]:
        with pytest.raises(BadConf, match=re.escape(said)):
            parse_conf("lightbox_data", conf)
    with pytest.raises(BadConf, match=r"no DAG 'lightbox_dta' \(DAGs: lightbox_data, "):
        parse_conf("lightbox_dta", None)
