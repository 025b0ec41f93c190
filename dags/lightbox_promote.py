"""lightbox_promote: golden set -> gates on a version -> (optional human approval) -> champion alias.

Triggered by hand or by CI with params; `require_approval` inserts an Airflow 3 human-in-the-loop
ApprovalOperator before the alias moves (a reject skips the promotion). Params left None take the
settings' values (LIGHTBOX_* environment, then the defaults).
"""

from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task

from lightbox.adapters.airflow_assets import CHAMPION

RETRIES = {"retries": 1, "retry_delay": timedelta(seconds=10)}


def _settings(params: dict):
    """The settings for this run: ``model_name`` overrides the registered model's name when given."""
    from lightbox.settings import load_settings

    return load_settings(model_name=params["model_name"]) if params.get("model_name") else load_settings()


@dag(
    dag_id="lightbox_promote",
    description=(
        "Run the quality gates on a registered version and move an alias (champion) to it, "
        "optionally after a human approves"
    ),
    schedule=None,
    catchup=False,
    is_paused_upon_creation=False,  # the UI flow chains without a toggle (README: Airflow UI)
    tags=["lightbox"],
    default_args=RETRIES,
    params={
        "version": Param(
            None,
            type=["null", "string", "integer"],
            description='model version to promote (3, or "3"); empty: the @challenger',
        ),
        "alias": Param(
            None, type=["null", "string"], description="alias to move to it; empty: champion_alias (champion)"
        ),
        "model_name": Param(
            None, type=["null", "string"], description="MLflow registered model; empty: model_name"
        ),
        "require_approval": Param(
            False, type="boolean", description="wait for a human to approve in the UI before the alias moves"
        ),
        "reason": Param(None, type=["null", "string"], description="why (recorded on the version)"),
    },
)
def lightbox_promote():
    @task
    def golden() -> dict:
        from lightbox.adapters.airflow_tasks import fails_fast
        from lightbox.settings import load_settings
        from pipelines import golden as golden_stage

        # Set aside at import (or rendered for the synthetic demo), then frozen: this confirms its version.
        with fails_fast():  # GoldenSetMissing: only a new import makes one, retrying cannot
            return golden_stage.run(load_settings()).version.to_dict()

    @task
    def gates(_golden: dict, **context) -> dict:
        from lightbox.adapters.airflow_tasks import fails_fast
        from pipelines import promote as promote_stage

        p = context["params"]
        with fails_fast(context):  # a lost race (PromotionRefused, not final) is left to the retry
            version = None if p["version"] in (None, "") else str(p["version"])
            return promote_stage.gate(_settings(p), version, alias=p["alias"]).to_dict()

    @task.branch
    def needs_approval(_gated: dict, **context) -> str:
        return "approve" if context["params"]["require_approval"] else "promote"

    approve = ApprovalOperator(
        task_id="approve",
        subject="Promote {{ ti.xcom_pull(task_ids='gates')['model_name'] }} "
        "v{{ ti.xcom_pull(task_ids='gates')['version'] }} to @{{ ti.xcom_pull(task_ids='gates')['alias'] }}?",
        body="Gates passed.\n\n{{ ti.xcom_pull(task_ids='gates')['summary'] }}\n\n"
        "Report: {{ ti.xcom_pull(task_ids='gates')['report_uri'] }}",
        response_timeout=timedelta(days=2),
    )

    # Runs after the branch picked it, or after an approval; a reject skips it.
    @task(outlets=[CHAMPION], trigger_rule="none_failed_min_one_success")
    def promote(gated: dict, **context) -> dict:
        from dataclasses import asdict

        from lightbox.adapters.airflow_tasks import fails_fast
        from pipelines import promote as promote_stage

        p = context["params"]
        with fails_fast(context):  # a lost race (PromotionRefused, not final) is left to the retry
            result = promote_stage.run(
                _settings(p),
                gated["version"],
                alias=gated["alias"],
                actor="airflow:lightbox_promote",
                reason=p["reason"] or ("approved" if p["require_approval"] else "gates passed"),
            )
        return asdict(result)

    gated = gates(golden())
    branch = needs_approval(gated)
    done = promote(gated)
    branch >> [approve, done]
    approve >> done


lightbox_promote()
