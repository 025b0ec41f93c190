"""lightbox_data: import labelled images -> validate -> version with DVC -> features into Feast.

Wiring only: every task body is a pipelines.* function. Trigger it with ``source`` (a folder, an export
file or s3://bucket/prefix) to import your photos; without one it renders the synthetic demo set. Every
param defaults to None so that the LIGHTBOX_* settings apply. Its last task updates the features Asset,
which schedules lightbox_train.
"""

from datetime import timedelta

from airflow.sdk import Param, dag, task

from lightbox.adapters.airflow_assets import FEATURES
from lightbox.label_formats import FORMATS

RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=10)}


def _text(description: str) -> Param:
    return Param(None, type=["null", "string"], description=description)


@dag(
    dag_id="lightbox_data",
    description=(
        "Import labelled photos (or render the demo set), validate them, version them with DVC and "
        "materialize their features in Feast; its last task schedules lightbox_train"
    ),
    schedule=None,
    catchup=False,
    is_paused_upon_creation=False,  # the UI flow chains without a toggle (README: Airflow UI)
    tags=["lightbox"],
    default_args=RETRIES,
    params={
        "source": _text(
            "your labelled photos: a folder, an export file or s3://bucket/prefix; empty: demo set"
        ),
        "format": Param(
            None,
            type=["null", "string"],
            enum=[None, *FORMATS],
            description="the labels' format (README: Formats); empty: detected from the source",
        ),
        "score_column": _text("score column or Label Studio control (default: score)"),
        "tags_column": _text("tags column, Label Studio control, or 0/1 columns A,B,C (default: tags)"),
        "split_column": _text("split column, values train/validation/test (default: split; none: assigned)"),
        "group_column": _text("group column: a group never straddles two splits (default: group)"),
        "score_range": _text("LOW,HIGH, e.g. 1,10 (default: the observed min and max)"),
        "local_files_root": _text("Label Studio LOCAL_FILES_DOCUMENT_ROOT"),
        "media_root": _text("Label Studio media folder (for /data/upload/ paths)"),
        "append": Param(False, type="boolean", description="add to the dataset instead of replacing it"),
        "golden": _text("your own golden set (any format); empty: a slice is set aside at the first import"),
        "n_sources": Param(
            None,
            type=["null", "integer"],
            minimum=3,
            description="demo set only (no source): source photos to render from; empty: dataset_sources",
        ),
        "variants": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            description=(
                "demo set only: distorted copies per source image (the set has sources x (variants + 3) "
                "images); empty: dataset_variants"
            ),
        ),
    },
)
def lightbox_data():
    @task
    def ingest(**context) -> dict:
        from dataclasses import asdict

        from lightbox.adapters.airflow_tasks import fails_fast
        from lightbox.errors import import_errors
        from lightbox.settings import load_settings
        from pipelines import ingest as stage

        with fails_fast(context, also=import_errors()):
            return asdict(stage.run(load_settings(), context["params"]))

    @task
    def validate(_ingested: dict) -> dict:
        from lightbox.adapters.airflow_tasks import fails_fast
        from lightbox.settings import load_settings
        from pipelines import validate_data

        with fails_fast(also=(validate_data.DataValidationError,)):
            result = validate_data.run(load_settings())
        return {
            "n_images": result.n_images,
            "quarantined": len(result.quarantined) + len(result.import_problems),
            "report": str(result.report_md),
        }

    @task
    def version(_validated: dict) -> dict:
        from lightbox.adapters.airflow_tasks import fails_fast
        from lightbox.settings import load_settings
        from pipelines import version_data

        with fails_fast():
            return version_data.run(load_settings()).to_dict()

    @task(outlets=[FEATURES])
    def features(_version: dict) -> dict:
        from dataclasses import asdict

        from lightbox.adapters.airflow_tasks import fails_fast
        from lightbox.settings import load_settings
        from pipelines import features as features_stage

        with fails_fast():
            return asdict(features_stage.run(load_settings()))

    features(version(validate(ingest())))


lightbox_data()
