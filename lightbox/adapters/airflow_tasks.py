"""What a DAG task does with its run's conf and its errors, so the DAG files stay wiring.

An error the user must fix (a wrong path, a misspelled column, a gate verdict: lightbox.errors) fails
the task at once with its one line: Airflow's retries cannot mend a typo, and the UI would show the task
"up for retry" for a certain failure. Anything else (a bug, a service down, a lost race) is left to the
retries. A conf key the DAG does not declare is refused first: a trigger from the UI's raw JSON, the REST
API or `airflow dags trigger` bypasses the CLI's check, and a misspelled ``source`` would otherwise run
with the default (the synthetic set instead of the user's photos).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from lightbox.adapters import ServiceUnavailable
from lightbox.adapters.airflow_runner import unknown_params
from lightbox.adapters.tracking_check import TrackingUnavailable
from lightbox.errors import known_error


def failure_line(exc: BaseException, also: tuple[type[BaseException], ...] = ()) -> str | None:
    """The line a task fails with, without retries, for ``exc``; None when a retry may succeed (a server
    that did not answer, a race another writer won: ``final`` False) or the error is a bug."""
    from lightbox.locks import Busy  # the other writer's end frees it
    from pipelines.score_catalog import ActorsDidNotStart  # a node too busy this time

    transient = ServiceUnavailable | TrackingUnavailable | ActorsDidNotStart | Busy
    if isinstance(exc, transient) or getattr(exc, "final", True) is False:
        return None
    if also and isinstance(exc, also):
        return str(exc)
    known = known_error(exc)
    return None if known is None else known[0]


def conf_refusal(context: Mapping[str, Any]) -> str | None:
    """The line refusing this run's undeclared params (Airflow merges the run's conf into the params,
    unknown keys included), or None."""
    dag = context.get("dag")
    declared = getattr(dag, "params", None) or {}
    given = (getattr(context.get("dag_run"), "conf", None) or {}).keys()
    return unknown_params(getattr(dag, "dag_id", "this DAG"), given, declared.keys())


@contextmanager
def fails_fast(
    context: Mapping[str, Any] | None = None, also: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """Run a task's body: its run's conf checked first (when ``context`` is given), and a known error (or
    one of ``also``) turned into AirflowFailException with its line."""
    from airflow.sdk.exceptions import AirflowFailException

    refusal = None if context is None else conf_refusal(context)
    if refusal is not None:
        raise AirflowFailException(refusal)
    try:
        yield
    except Exception as exc:
        line = failure_line(exc, also)
        if line is None:
            raise
        # from None: the log shows the line once, not the same verdict twice (the cause, then this).
        raise AirflowFailException(line) from None
