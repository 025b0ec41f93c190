"""DagBag: the DAG files import cleanly, fast, and every task retries."""

import os
import time

import pytest

from lightbox.settings import CODE_ROOT


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("airflow")
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        }
    )
    from airflow.dag_processing.dagbag import DagBag

    t0 = time.perf_counter()
    bag = DagBag(dag_folder=str(CODE_ROOT / "dags"))
    bag.parse_seconds = time.perf_counter() - t0
    return bag


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert {
        "lightbox_data",
        "lightbox_train",
        "lightbox_promote",
        "lightbox_score_catalog",
        "lightbox_monitor",
    } <= set(dagbag.dag_ids)


def test_every_task_has_retries(dagbag) -> None:
    for dag in dagbag.dags.values():
        for t in dag.tasks:
            assert t.retries >= 1, f"{dag.dag_id}.{t.task_id} has no retries"


def test_parse_is_cheap(dagbag, tmp_path) -> None:
    # Nothing heavy at parse time: the pipelines are imported inside the task bodies. Checked in a
    # fresh interpreter, since other tests in this process import the heavy modules themselves.
    import json
    import subprocess
    import sys

    assert dagbag.parse_seconds < 10
    probe = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"DagBag(dag_folder={str(CODE_ROOT / 'dags')!r})\n"
        "heavy = ('torch', 'ray', 'mlflow', 'feast', 'dvc', 'great_expectations', 'pipelines')\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    env = dict(os.environ) | {"AIRFLOW_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_datasets_link_the_dags(dagbag) -> None:
    data_outlets = {o.uri for t in dagbag.dags["lightbox_data"].tasks for o in t.outlets}
    assert "lightbox://features/image_quality_v1" in data_outlets
    assert "Asset" in type(dagbag.dags["lightbox_train"].timetable).__name__


def test_params_are_exposed(dagbag) -> None:
    assert {"n_sources", "variants"} <= set(dagbag.dags["lightbox_data"].params.keys())
    assert {"trials", "epochs", "model_name", "train_mode", "int8"} <= set(
        dagbag.dags["lightbox_train"].params.keys()
    )
    assert "model_name" in dagbag.dags["lightbox_promote"].params
    assert {"source", "model", "out"} <= set(dagbag.dags["lightbox_score_catalog"].params.keys())


@pytest.mark.parametrize("dag_id", ["lightbox_train", "lightbox_promote", "lightbox_score_catalog"])
def test_params_default_to_none_so_settings_apply(dagbag, dag_id: str) -> None:
    # A concrete default would override LIGHTBOX_TUNE_TRIALS and friends on every run.
    params = dagbag.dags[dag_id].params
    settable = {k: params[k] for k in params if k != "require_approval"}
    assert settable and all(v is None for v in settable.values()), settable
    # The defaults validate against the param schemas (a bare type="integer" would refuse None).
    params.validate()


def test_assets_are_defined_once(dagbag) -> None:
    from lightbox.adapters import airflow_assets

    outlets = {o for dag in dagbag.dags.values() for t in dag.tasks for o in t.outlets}
    known = {airflow_assets.FEATURES.uri, airflow_assets.CHAMPION.uri, airflow_assets.DRIFT.uri}
    assert {o.uri for o in outlets} <= known
    assert airflow_assets.FEATURES in dagbag.dags["lightbox_data"].get_task("features").outlets
    for path in (CODE_ROOT / "dags").glob("*.py"):
        assert "Asset(" not in path.read_text(), f"{path.name} defines its own Asset"


def test_promotion_dag_gates_before_an_optional_approval(dagbag) -> None:
    dag = dagbag.dags["lightbox_promote"]
    assert {"version", "alias", "require_approval"} <= set(dag.params.keys())
    assert dag.params["require_approval"] is False  # approval is opt-in
    approve, promote = dag.get_task("approve"), dag.get_task("promote")
    assert type(approve).__name__ == "ApprovalOperator"
    assert "gates" in dag.get_task("needs_approval").upstream_task_ids
    # promote waits for the branch or the approval, and runs when the branch skipped the approval
    assert {"approve", "needs_approval", "gates"} <= promote.upstream_task_ids
    assert promote.trigger_rule == "none_failed_min_one_success"
    assert "golden" in dagbag.dags["lightbox_train"].get_task("promote").upstream_task_ids


def test_a_promotion_schedules_catalog_scoring(dagbag) -> None:
    from lightbox.adapters import airflow_assets

    dag = dagbag.dags["lightbox_score_catalog"]
    assert "Asset" in type(dag.timetable).__name__
    assert [a.uri for a in dag.timetable.asset_condition.objects] == [airflow_assets.CHAMPION.uri]
    assert dag.max_active_runs == 1  # one writer per output folder


def test_drift_updates_the_drift_asset_only_from_its_signal_task(dagbag) -> None:
    from lightbox.adapters import airflow_assets

    dag = dagbag.dags["lightbox_monitor"]
    assert {"alias", "source", "last"} <= set(dag.params.keys())
    signal = dag.get_task("signal_drift")
    assert [a.uri for a in signal.outlets] == [airflow_assets.DRIFT.uri]
    assert signal.upstream_task_ids == {"measure"}
    assert dag.get_task("measure").outlets == []


def test_the_chained_dags_are_unpaused_from_creation(dagbag) -> None:
    """The README's UI flow: lightbox_data's features start lightbox_train by themselves. A DAG paused at
    creation (Airflow's default) receives no Asset events, so the probe's chain never ran. The daily
    monitor stays paused until an operator has a served model to watch."""
    paused = {d.dag_id: d.is_paused_upon_creation for d in dagbag.dags.values()}
    assert paused["lightbox_train"] is False and paused["lightbox_data"] is False
    assert paused["lightbox_score_catalog"] is False and paused["lightbox_promote"] is False
    assert paused["lightbox_monitor"] is not False
