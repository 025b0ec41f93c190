"""Known errors: the one place that maps the exceptions a user can fix to one line and an exit code.

The pipelines and adapters raise typed errors whose message says what to do; the CLI prints that line
(lightbox.cli), and a DAG task fails with it at once instead of retrying (lightbox.adapters.airflow_tasks).
Nothing here imports torch, MLflow or Airflow at module level: `lightbox --help` imports this module.
"""

from __future__ import annotations

import sys

from lightbox.settings import SettingsError


def known_error(exc: BaseException) -> tuple[str, int] | None:
    """The one line and exit code for an error the user can fix (None: a bug, shown as a traceback).

    No command repeats a try/except for these. Exit code 2: the configuration is wrong (settings,
    tracking URI, a malformed argument); 1: the project's state refuses the action (nothing promoted,
    no golden set, no such version, gates failed)."""
    # Imported here, not at module level: `lightbox --help` must not import torch or MLflow.
    from lightbox.adapters import ServiceUnavailable
    from lightbox.adapters.airflow_runner import BadConf
    from lightbox.adapters.dvc_repo import DataUnavailable, NoDatasetVersion
    from lightbox.adapters.mlflow_registry import ArtifactError, VersionNotFound
    from lightbox.adapters.tracking_check import TrackingUnavailable
    from lightbox.aliases import BadAlias
    from lightbox.locks import Busy
    from lightbox.manifest import ManifestError
    from pipelines.data import DemoSetRefused
    from pipelines.features import FeaturesOutOfDate
    from pipelines.golden import GoldenSetMissing
    from pipelines.lineage import BadModelUri
    from pipelines.monitor import NoPredictions, NoReference
    from pipelines.promote import PromotionRefused
    from pipelines.quantize import QuantizeRefused
    from pipelines.score_catalog import ActorsDidNotStart
    from pipelines.train import NotTrainable
    from serving.server import CannotServe
    from training.predictor import ModelNotFound

    if isinstance(
        exc,
        SettingsError | TrackingUnavailable | BadModelUri | ServiceUnavailable | BadConf | BadAlias,
    ):
        return str(exc), 2
    # S3 (imported only where an s3:// path is used): no credentials, no endpoint, no bucket.
    boto = sys.modules.get("botocore.exceptions")
    if boto is not None and isinstance(
        exc,
        boto.NoCredentialsError
        | boto.PartialCredentialsError
        | boto.EndpointConnectionError
        | boto.ClientError,
    ):
        return (
            f"S3: {' '.join(str(exc).split())}: check LIGHTBOX_S3_ENDPOINT_URL and the AWS credentials "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
            2,
        )
    if isinstance(
        exc,
        ModelNotFound
        | VersionNotFound
        | PromotionRefused
        | GoldenSetMissing
        | ManifestError
        | ArtifactError
        | CannotServe
        | NoReference
        | NoPredictions
        | QuantizeRefused
        | ActorsDidNotStart
        | NoDatasetVersion
        | DataUnavailable
        | FeaturesOutOfDate
        | NotTrainable
        | DemoSetRefused
        | Busy,
    ):
        return str(exc), 1
    # MLflow's own "not found" for what a command names (a model, a version, an alias). Read only when
    # MLflow is loaded: if it is not, the error cannot be one of its own.
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    if (
        mlflow_exceptions is not None
        and isinstance(exc, mlflow_exceptions.MlflowException)
        and exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
    ):
        # Not found (a model, a version, an alias), or a malformed argument (a version "abc").
        code = 1 if exc.error_code == "RESOURCE_DOES_NOT_EXIST" else 2
        return " ".join(exc.message.split()), code
    return None


def import_errors() -> tuple[type[BaseException], ...]:
    """What an import raises for the user's source or options (a wrong path, a missing column, a range
    that does not parse): each message is the line to show, data/ unchanged."""
    from lightbox.label_formats import FormatError
    from lightbox.manifest import ManifestError
    from lightbox.source_tree import SourceNotFound
    from pipelines.importer import ImportFailed

    return (FormatError, ImportFailed, ManifestError, SourceNotFound, ValueError)
