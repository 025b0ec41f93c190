"""lightbox_promote: golden set -> gates on a version -> (optional human approval) -> champion alias.

Triggered by hand or by CI with params; `require_approval` inserts an Airflow 3 human-in-the-loop
ApprovalOperator before the alias moves (a reject skips the promotion).
"""

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, Param, dag, task

CHAMPION = Asset("lightbox://models/champion")
RETRIES = {"retries": 1, "retry_delay": timedelta(seconds=10)}


@dag(
    dag_id="lightbox_promote",
    schedule=None,
    catchup=False,
    tags=["lightbox"],
    default_args=RETRIES,
    params={
        "version": Param("", type="string", description="model version; empty: the @challenger"),
        "alias": Param("champion", type="string", description="alias to move"),
        "require_approval": Param(False, type="boolean", description="ask a human before promoting"),
        "reason": Param("", type="string", description="why (recorded on the version)"),
    },
)
def lightbox_promote():
    @task
    def golden() -> dict:
        from lightbox.settings import load_settings
        from pipelines import golden as golden_stage

        return golden_stage.run(load_settings()).version.to_dict()

    @task
    def gates(_golden: dict, **context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from lightbox.adapters import mlflow_registry
        from lightbox.settings import load_settings
        from pipelines import validate_model

        settings = load_settings()
        version = context["params"]["version"] or str(
            mlflow_registry.version_by_alias(settings, settings.challenger_alias).version
        )
        report = validate_model.run(settings, version)
        if not report.passed:
            raise AirflowFailException("gates failed:\n  " + "\n  ".join(report.verdict.reasons))
        return {"version": version, "report": report.report_uri, "summary": report.verdict.summary()}

    @task.branch
    def needs_approval(_gated: dict, **context) -> str:
        return "approve" if context["params"]["require_approval"] else "promote"

    approve = ApprovalOperator(
        task_id="approve",
        subject="Promote {{ ti.xcom_pull(task_ids='gates')['version'] }} to @{{ params.alias }}?",
        body="Gates passed.\n\n{{ ti.xcom_pull(task_ids='gates')['summary'] }}\n\n"
        "Report: {{ ti.xcom_pull(task_ids='gates')['report'] }}",
        response_timeout=timedelta(days=2),
    )

    # Runs after the branch picked it, or after an approval; a reject skips it.
    @task(outlets=[CHAMPION], trigger_rule="none_failed_min_one_success")
    def promote(gated: dict, **context) -> dict:
        from dataclasses import asdict

        from airflow.sdk.exceptions import AirflowFailException

        from lightbox.settings import load_settings
        from pipelines import promote as promote_stage

        p = context["params"]
        try:
            result = promote_stage.run(
                load_settings(),
                gated["version"],
                alias=p["alias"],
                actor="airflow:lightbox_promote",
                reason=p["reason"] or ("approved" if p["require_approval"] else "gates passed"),
            )
        except promote_stage.GateFailed as exc:
            raise AirflowFailException(str(exc)) from exc
        return asdict(result)

    gated = gates(golden())
    branch = needs_approval(gated)
    done = promote(gated)
    branch >> [approve, done]
    approve >> done


lightbox_promote()
