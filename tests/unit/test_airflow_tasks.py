"""A DAG task's errors and conf: a known error fails at once in its line, anything else is retried, and
a conf key the DAG does not declare is refused (a UI or REST trigger bypasses the CLI's check)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException

from lightbox.adapters import ServiceUnavailable
from lightbox.adapters.airflow_tasks import conf_refusal, fails_fast
from lightbox.adapters.dvc_repo import NoDatasetVersion
from lightbox.source_tree import SourceNotFound
from pipelines.promote import PromotionRefused


def _context(conf: dict, declared: tuple[str, ...] = ("source", "score_column")) -> dict:
    dag = SimpleNamespace(dag_id="lightbox_data", params={k: None for k in declared})
    return {"dag": dag, "dag_run": SimpleNamespace(conf=conf), "params": {**dag.params, **conf}}


def test_a_misspelled_conf_key_is_refused_with_the_nearest_param() -> None:
    line = conf_refusal(_context({"sorce": "/photos"}))
    assert line is not None
    assert "no param sorce (did you mean source?)" in line
    assert conf_refusal(_context({"source": "/photos"})) is None
    assert conf_refusal(_context({})) is None


def test_fails_fast_refuses_the_conf_before_the_body_runs() -> None:
    ran = []
    with (
        pytest.raises(AirflowFailException, match="did you mean source"),
        fails_fast(_context({"sorce": "x"})),
    ):
        ran.append(True)
    assert ran == []


def test_a_known_error_fails_at_once_with_its_line() -> None:
    """A typo in a path is retried twice, 10 s apart, for a certain failure; now one line, no retry."""
    with pytest.raises(AirflowFailException) as caught, fails_fast():
        raise NoDatasetVersion("no dataset version yet: run lightbox_data first")
    assert str(caught.value) == "no dataset version yet: run lightbox_data first"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # said once in the log


def test_also_names_the_errors_a_stage_knows() -> None:
    with pytest.raises(AirflowFailException, match="neither a folder"), fails_fast(also=(SourceNotFound,)):
        raise SourceNotFound("/nope is neither a folder nor a file")


@pytest.mark.parametrize(
    "exc",
    [
        ServiceUnavailable("PostgreSQL at 127.0.0.1:5432 did not answer"),  # may answer on the retry
        RuntimeError("a bug"),  # not ours to reword
        type("LostRace", (PromotionRefused,), {"final": False})("another promotion won the race"),
    ],
)
def test_what_a_retry_may_mend_is_left_to_the_retries(exc: Exception) -> None:
    with pytest.raises(type(exc)), fails_fast():
        raise exc
