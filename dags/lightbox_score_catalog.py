"""lightbox_score_catalog: score a whole catalog with a model version on Ray Data (pipelines/score_catalog).

Scheduled by the champion Asset that a promotion updates (the new champion scores the catalog of
settings.catalog_source), and run on demand with params. The job is resumable and exactly once per
(image, model name, model version), so a retry or a second run only scores what is missing, retries
the images that failed, and scores again the photos edited in place since (told by the listing's size
and mtime or ETag). Params left None take the settings' values (LIGHTBOX_* environment, then the
defaults).
"""

from datetime import timedelta

from airflow.sdk import Param, dag, task

from lightbox.adapters.airflow_assets import CHAMPION

RETRIES = {"retries": 2, "retry_delay": timedelta(minutes=1)}


@dag(
    dag_id="lightbox_score_catalog",
    description="Score a catalog (folder, s3:// prefix, URI list) with the champion or an alias, on Ray Data",
    schedule=[CHAMPION],
    catchup=False,
    is_paused_upon_creation=False,  # the UI flow chains without a toggle (README: Airflow UI)
    max_active_runs=1,  # one writer per output: two runs would score the same images twice
    tags=["lightbox"],
    default_args=RETRIES,
    params={
        "source": Param(
            None, type=["null", "string"], description="folder, s3://bucket/prefix, .txt or .parquet of URIs"
        ),
        "model": Param(
            None,
            type=["null", "string"],
            description="models:/NAME@ALIAS or models:/NAME/VERSION; empty: the champion",
        ),
        "out": Param(None, type=["null", "string"], description="parquet folder or `postgres`"),
        "online": Param(
            None,
            type=["null", "boolean"],
            description="also publish scores and embeddings to Feast online; empty: LIGHTBOX_SCORE_ONLINE",
        ),
    },
)
def lightbox_score_catalog():
    @task
    def score(**context) -> dict:
        from dataclasses import asdict

        from airflow.sdk.exceptions import AirflowSkipException

        from lightbox.adapters.airflow_tasks import fails_fast
        from lightbox.catalog import CatalogError
        from lightbox.results import BadDestination
        from lightbox.source_tree import SourceNotFound
        from pipelines import score_catalog

        p = context["params"]
        with fails_fast(context, also=(SourceNotFound, CatalogError, BadDestination)):
            settings, source, out, alias, version = score_catalog.job_settings(
                p["source"], p["model"], p["out"], p.get("online")
            )
            if source is None:
                raise AirflowSkipException(
                    "no catalog to score: set the source param or LIGHTBOX_CATALOG_SOURCE"
                )
            return asdict(score_catalog.run(settings, source, out, alias=alias, version=version))

    score()


lightbox_score_catalog()
