"""lightbox_monitor: a served version's recent predictions against its own test split (pipelines/monitor).

Daily, and on demand with params. The report is an MLflow run in `<experiment>-monitor`; when the
predictions drifted past the thresholds (LIGHTBOX_MONITOR_PSI_THRESHOLD, ..._JS_THRESHOLD) the second
task updates the DRIFT Asset, which a retraining DAG can be scheduled on. Params left None take the
settings' values (LIGHTBOX_* environment, then the defaults).
"""

from datetime import timedelta

from airflow.sdk import Param, dag, task

from lightbox.adapters.airflow_assets import DRIFT

RETRIES = {"retries": 1, "retry_delay": timedelta(minutes=1)}


@dag(
    dag_id="lightbox_monitor",
    description="Compare a served version's recent predictions with its test split (score PSI, tag rates)",
    schedule="@daily",
    catchup=False,
    max_active_runs=1,
    tags=["lightbox"],
    default_args=RETRIES,
    params={
        "alias": Param(
            None, type=["null", "string"], description="the version at this alias; empty: champion"
        ),
        "source": Param(
            None,
            type=["null", "string"],
            description="`postgres` (the results table) or a scoring parquet folder; empty: catalog output",
        ),
        "last": Param(5000, type="integer", minimum=50, description="how many of the newest predictions"),
    },
)
def lightbox_monitor():
    @task
    def measure(**context) -> dict:
        from lightbox.adapters.airflow_tasks import fails_fast
        from lightbox.settings import load_settings
        from pipelines import monitor

        p = context["params"]
        with fails_fast(context):
            return monitor.run(
                load_settings(), alias=p["alias"], source=p["source"], last=p["last"]
            ).to_dict()

    @task(outlets=[DRIFT])
    def signal_drift(result: dict) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        # A skipped task emits no Asset event: retraining is scheduled only by a drifted result.
        if not result["drifted"]:
            raise AirflowSkipException(result["note"] or "no drift over the thresholds")
        return result

    signal_drift(measure())


lightbox_monitor()
