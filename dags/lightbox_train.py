"""lightbox_train: Ray Tune on Feast features -> MLflow model (@challenger) -> gates -> champion alias.

Scheduled by the features Asset that lightbox_data updates; can also be triggered with params.
"""

from datetime import timedelta

from airflow.sdk import Asset, Param, dag, task

FEATURES = Asset("lightbox://features/image_quality_v1")
CHAMPION = Asset("lightbox://models/champion")
RETRIES = {"retries": 1, "retry_delay": timedelta(seconds=10)}


@dag(
    dag_id="lightbox_train",
    schedule=[FEATURES],
    catchup=False,
    tags=["lightbox"],
    default_args=RETRIES,
    params={
        "trials": Param(4, type="integer", minimum=1, description="Ray Tune trials (ASHA)"),
        "epochs": Param(60, type="integer", minimum=1, description="max epochs per trial"),
    },
)
def lightbox_train():
    @task
    def train(**context) -> dict:
        from lightbox.settings import load_settings
        from pipelines import train as train_stage

        p = context["params"]
        return train_stage.run(load_settings(), trials=p["trials"], epochs=p["epochs"]).to_dict()

    @task
    def golden() -> dict:
        from lightbox.settings import load_settings
        from pipelines import golden as golden_stage

        # Built once, then frozen: later runs only confirm its DVC version.
        return golden_stage.run(load_settings()).version.to_dict()

    @task(outlets=[CHAMPION])
    def promote(trained: dict, _golden: dict) -> dict:
        from dataclasses import asdict

        from airflow.sdk.exceptions import AirflowFailException

        from lightbox.settings import load_settings
        from pipelines import promote as promote_stage

        try:
            result = promote_stage.run(
                load_settings(), trained["model_version"], actor="airflow:lightbox_train", reason="trained"
            )
        except promote_stage.GateFailed as exc:
            # A failed gate is a verdict, not a flake: fail without retrying, and say why.
            raise AirflowFailException(str(exc)) from exc
        return asdict(result)

    promote(train(), golden())


lightbox_train()
