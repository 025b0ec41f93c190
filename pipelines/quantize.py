"""Stage: an int8 candidate of a registered version (``lightbox quantize --version N``).

The version's ONNX export is statically quantized (``training.quantize``), calibrated on training
images through the serving decode, and registered as a new version of the same model: a candidate like
any other. The gates judge it on its int8 graph (its golden metrics within ``gate_int8_max_metric_delta``
of its own fp32 weights', beside every other gate), promotion moves an alias to it, rollback moves the
alias back. Nothing here moves an alias or changes the source version.

The candidate gets a run of its own, nested under the source's training run, with the source's params,
tags and test metrics copied (the gates' test-split floors read them; the gates' own numbers for the
int8 graph then land in this run, not over the fp32 version's).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lightbox.adapters import mlflow_registry
from lightbox.settings import Settings

log = logging.getLogger(__name__)

QUANTIZED_FROM_TAG = "quantized_from"  # on the int8 version: the version whose weights it quantized
# Version tags that describe a judgement or a promotion of the source: not the candidate's.
_NOT_COPIED = (
    "gate.",
    "runtime.",
    "promotion.",
    "shadow.",
    "canary.",
    "monitor.",
    "mlflow.",
    "lightbox.ungated",
    "lightbox.failed_reason",
)
# Metric names the gates log (pipelines.validate_model.metric_name of their evidence keys).
_GATE_METRICS = ("golden_", "behaviour_", "serving_", "export_")


class QuantizeRefused(ValueError):
    """Nothing to quantize, or nothing to calibrate on: the message says what to do."""


@dataclass(frozen=True)
class QuantizeResult:
    model_name: str
    version: str  # the int8 candidate
    source_version: str
    run_id: str
    calibration_images: int
    fp32_mb: float
    int8_mb: float

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_images(settings: Settings, folder: Path | None = None) -> np.ndarray:
    """Up to ``settings.quantize_calibration_images`` images through the serving decode (uint8
    [N,3,224,224]): from ``folder`` (any images, sorted by name), else the workspace dataset's train
    split in manifest order. Unreadable files are skipped (the data validation reports them)."""
    from lightbox.imaging import ImageDecodeError, is_image_name, preprocess_bytes
    from lightbox.manifest import MANIFEST_NAME, read_manifest

    if folder is not None:
        if not folder.is_dir():
            raise QuantizeRefused(f"--calibration {folder}: not a folder of images")
        files = (p for p in folder.rglob("*") if p.is_file())
        paths = sorted(p for p in files if is_image_name(p.name))
        where = str(folder)
    else:
        if not (settings.data_dir / MANIFEST_NAME).is_file():
            raise QuantizeRefused(
                f"no dataset at {settings.data_dir} to calibrate on: import one (lightbox data import) "
                "or pass --calibration FOLDER of representative photos"
            )
        rows = [r for r in read_manifest(settings.data_dir) if r.get("split") == "train"]
        paths = [settings.data_dir / r["path"] for r in rows]
        where = f"the train split of {settings.data_dir}"
    images: list[np.ndarray] = []
    for path in paths:
        if len(images) >= settings.quantize_calibration_images:
            break
        try:
            images.append(preprocess_bytes(path.read_bytes(), max_pixels=settings.max_pixels))
        except (OSError, ImageDecodeError) as exc:
            log.warning("calibration: skipping %s (%s)", path, exc)
    if not images:
        raise QuantizeRefused(f"no readable images in {where} to calibrate the int8 graph on")
    return np.stack(images)


def _source_run(client, version: str, run_id: str | None):  # noqa: ANN001, ANN202 - MLflow's own types
    """The training run of the source version, which the candidate's run nests under; a clear refusal
    when the version was registered without one or its run was deleted."""
    from mlflow.exceptions import MlflowException

    why = f"version {version} has no training run to nest the int8 candidate's run under"
    if not run_id:
        raise QuantizeRefused(f"{why} (registered without one)")
    try:
        found = client.get_run(run_id)
    except MlflowException as exc:
        raise QuantizeRefused(f"{why}: run {run_id}: {exc.message}"[:500]) from None
    if found.info.lifecycle_stage == "deleted":
        raise QuantizeRefused(f"{why}: run {run_id} is deleted (restore it: mlflow runs restore)")
    return found


def run(settings: Settings, version: str, calibration: Path | None = None) -> QuantizeResult:
    """Quantize ``version`` and register the int8 candidate; its version and what it was made from."""
    import mlflow
    from lightbox.adapters import mlflow_runs
    from pipelines import doctor
    from training.export import ExportError, export_onnx
    from training.quantize import QuantizeError, quantize_int8

    doctor.recover_training(settings)  # a killed quantize left its run RUNNING: settle it first
    mlflow_registry.configure(settings)
    version = str(version)
    source = mlflow_registry.require_version(settings, version)
    # Its files may be unjudged (quantize straight after training): the candidate is judged itself.
    loaded = mlflow_registry.load_version(settings, version, allow_unverified=True)
    if loaded.quantized:
        raise QuantizeRefused(f"version {version} is already an int8 candidate: quantize its fp32 source")
    images = calibration_images(settings, calibration)
    try:
        fp32 = loaded.onnx if loaded.onnx is not None else export_onnx(loaded.model)
        int8 = quantize_int8(fp32, images)
    except (ExportError, QuantizeError) as exc:
        raise QuantizeRefused(f"version {version}: {exc}") from None

    client = mlflow_registry.client(settings)
    src_run = _source_run(client, version, source.run_id)
    tags = {k: v for k, v in src_run.data.tags.items() if not k.startswith(_NOT_COPIED)}
    tags |= {"lightbox.stage": "quantize", QUANTIZED_FROM_TAG: version} | mlflow_runs.owner_tags()
    experiment = src_run.info.experiment_id
    with mlflow.start_run(
        run_name=f"int8-of-v{version}", experiment_id=experiment, tags=tags, parent_run_id=source.run_id
    ) as run:
        mlflow.log_params(src_run.data.params)
        # The training's numbers (test_, val_, fit_...), not the source's gate evidence: the gates log
        # this candidate's own under the same names.
        trained = {k: v for k, v in src_run.data.metrics.items() if not k.startswith(_GATE_METRICS)}
        mlflow.log_metrics(trained)
        mlflow.log_params({"int8_calibration_images": len(images), "int8_source_version": version})
        new = mlflow_registry.log_lightbox_model(
            loaded.model,
            images[:1],
            settings.model_name,
            label_spec=loaded.metadata.get("label_spec"),
            int8_onnx=int8,
        )
    copied = {k: v for k, v in (source.tags or {}).items() if not k.startswith(_NOT_COPIED)}
    mlflow_registry.set_version_tags(
        settings, new, copied | {QUANTIZED_FROM_TAG: version, "run_id": run.info.run_id}
    )
    result = QuantizeResult(
        settings.model_name, new, version, run.info.run_id, len(images), len(fp32) / 1e6, len(int8) / 1e6
    )
    log.info("registered %s: int8 of version %s", mlflow_registry.model_uri(settings, new), version)
    return result


def candidate(settings: Settings, version: str, calibration: Path | None = None) -> dict:
    """What the training DAG runs when asked for int8: quantize ``version``, then gate the candidate
    (its verdict and report recorded on it, as `lightbox gates` records them). It moves no alias:
    promoting an int8 model is a decision (`lightbox promote --version N`). A refusal is an answer,
    not an error: the verdict's reasons come back with the result."""
    from pipelines import validate_model

    made = run(settings, version, calibration)
    report = validate_model.run(settings, made.version)
    if not report.passed:
        log.warning("int8 candidate %s refused: %s", made.version, "; ".join(report.verdict.reasons))
    return made.to_dict() | {"gates_passed": report.passed, "gate_reasons": report.verdict.reasons}


def after_training(settings: Settings, version: str, asked: bool | None) -> dict | None:
    """The training DAG's int8 step: ``candidate`` when asked (the run's ``int8`` param, else
    ``settings.train_int8``), else nothing."""
    return candidate(settings, version) if (settings.train_int8 if asked is None else asked) else None
