"""lightbox_train: Ray Tune on Feast features -> MLflow model (@challenger) -> gates -> champion alias;
with ``int8``, also an int8 candidate of that version, registered and gated (not promoted).

Scheduled by the features Asset that lightbox_data updates; can also be triggered with params. Every
param defaults to None, meaning "the settings' value" (LIGHTBOX_* environment, then the defaults).
"""

from datetime import timedelta

from airflow.sdk import Param, dag, task

from lightbox.adapters.airflow_assets import CHAMPION, FEATURES

RETRIES = {"retries": 1, "retry_delay": timedelta(seconds=10)}


def _settings(params: dict):
    """The settings for this run: ``model_name`` overrides the registered model's name when given."""
    from lightbox.settings import load_settings

    return load_settings(model_name=params["model_name"]) if params.get("model_name") else load_settings()


@dag(
    dag_id="lightbox_train",
    description=(
        "Tune (Ray Tune) and train on the Feast features, log to MLflow, register as @challenger "
        "and promote to @champion through the quality gates"
    ),
    schedule=[FEATURES],
    catchup=False,
    is_paused_upon_creation=False,  # the UI flow chains without a toggle (README: Airflow UI)
    tags=["lightbox"],
    default_args=RETRIES,
    params={
        "trials": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="Ray Tune trials (configurations tried); empty: tune_trials",
        ),
        "epochs": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description="most epochs per trial (ASHA stops weak ones early); empty: tune_epochs",
        ),
        "model_name": Param(
            None, type=["null", "string"], description="MLflow registered model to train; empty: model_name"
        ),
        "train_mode": Param(
            None,
            type=["null", "string"],
            enum=[None, "heads", "finetune"],
            description="heads (Feast features) or finetune (backbone too, from images); empty: train_mode",
        ),
        "int8": Param(
            None,
            type=["null", "boolean"],
            description="also register and gate an int8 candidate (not promoted); empty: train_int8",
        ),
    },
)
def lightbox_train():
    @task
    def train(**context) -> dict:
        from lightbox.adapters.airflow_tasks import fails_fast
        from pipelines import train as train_stage

        p = context["params"]
        with fails_fast(context):
            return train_stage.run(
                _settings(p), trials=p["trials"], epochs=p["epochs"], mode=p.get("train_mode") or None
            ).to_dict()

    @task
    def golden() -> dict:
        from lightbox.adapters.airflow_tasks import fails_fast
        from lightbox.settings import load_settings
        from pipelines import golden as golden_stage

        # Set aside at import (or rendered for the synthetic demo), then frozen: this confirms its version.
        with fails_fast():  # GoldenSetMissing: only a new import makes one, retrying cannot
            return golden_stage.run(load_settings()).version.to_dict()

    @task(outlets=[CHAMPION])
    def promote(trained: dict, _golden: dict, **context) -> dict:
        from dataclasses import asdict

        from lightbox.adapters.airflow_tasks import fails_fast
        from pipelines import promote as promote_stage

        with fails_fast(context):  # a lost race (PromotionRefused, not final) is left to the retry
            result = promote_stage.run(
                _settings(context["params"]),
                trained["model_version"],
                actor="airflow:lightbox_train",
                reason="trained",
            )
        return asdict(result)

    @task
    def int8_candidate(trained: dict, _golden: dict, **context) -> dict | None:
        from lightbox.adapters.airflow_tasks import fails_fast
        from pipelines import quantize

        p = context["params"]
        with fails_fast(context):  # QuantizeRefused: nothing to calibrate on, no export; retrying cannot
            return quantize.after_training(_settings(p), trained["model_version"], p.get("int8"))

    trained, frozen = train(), golden()
    promote(trained, frozen)
    int8_candidate(trained, frozen)


lightbox_train()
