"""lightbox_data: build labeled images -> validate -> version with DVC -> features into Feast.

Wiring only: every task body is a pipelines.* function. Its last task updates the features Asset,
which schedules lightbox_train.
"""

from datetime import timedelta

from airflow.sdk import Asset, Param, dag, task

FEATURES = Asset("lightbox://features/image_quality_v1")
RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=10)}


@dag(
    dag_id="lightbox_data",
    schedule=None,
    catchup=False,
    tags=["lightbox"],
    default_args=RETRIES,
    params={
        "n_sources": Param(40, type="integer", minimum=3, description="source images"),
        "variants": Param(12, type="integer", minimum=1, description="distorted variants per source"),
    },
)
def lightbox_data():
    @task
    def build(**context) -> dict:
        from dataclasses import asdict

        from lightbox.settings import load_settings
        from pipelines import data

        p = context["params"]
        result = data.run(load_settings(), n_sources=p["n_sources"], variants=p["variants"])
        return {k: str(v) for k, v in asdict(result).items()}

    @task
    def validate(_built: dict) -> dict:
        from lightbox.settings import load_settings
        from pipelines import validate_data

        result = validate_data.run(load_settings())
        return {
            "n_images": result.n_images,
            "quarantined": len(result.quarantined),
            "report": str(result.report_md),
        }

    @task
    def version(_validated: dict) -> dict:
        from lightbox.settings import load_settings
        from pipelines import version_data

        return version_data.run(load_settings()).to_dict()

    @task(outlets=[FEATURES])
    def features(_version: dict) -> dict:
        from dataclasses import asdict

        from lightbox.settings import load_settings
        from pipelines import features as features_stage

        return asdict(features_stage.run(load_settings()))

    features(version(validate(build())))


lightbox_data()
