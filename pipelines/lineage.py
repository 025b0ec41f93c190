"""Lineage of a registered model: version -> run -> dataset version -> feature service -> code revision.

``parse_model_uri`` and ``format_lineage`` are pure; ``run`` reads the registry and the run.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from lightbox.adapters import mlflow_registry
from lightbox.settings import Settings
from pipelines.gates import ModelLabels

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


@dataclass(frozen=True)
class Lineage:
    model_name: str
    version: str
    aliases: list[str]
    run_id: str
    run_name: str
    experiment_id: str
    data_md5: str
    data_git_rev: str
    data_uri: str
    dataset_name: str
    dataset_digest: str
    feature_service: str
    code_revision: str
    gate_passed: str
    promoted_by: str
    labels: str = ""  # what the model answers: its tags and score scale (ModelLabels.describe)

    def to_dict(self) -> dict:
        return asdict(self)


class BadModelUri(ValueError):
    """The argument is no models:/NAME/VERSION or models:/NAME@ALIAS URI."""


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME/N`` or ``models:/NAME@ALIAS`` -> (name, version, alias)."""
    m = _URI.match(uri.strip())
    if m is None:
        raise BadModelUri(f"expected models:/NAME/VERSION or models:/NAME@ALIAS, got {uri!r}")
    return m["name"], m["version"], m["alias"]


def format_lineage(lin: Lineage) -> str:
    aliases = f" (@{', @'.join(lin.aliases)})" if lin.aliases else ""
    return "\n".join(
        [
            f"model     models:/{lin.model_name}/{lin.version}{aliases}  gates passed: {lin.gate_passed}"
            + (f", promoted by {lin.promoted_by}" if lin.promoted_by else ""),
            f"  answers   {lin.labels or 'labels not recorded'}",
            f"  <- run      {lin.run_id} ({lin.run_name}, experiment {lin.experiment_id})",
            f"  <- dataset  {lin.dataset_name or '-'} digest {lin.dataset_digest or '-'}: "
            f"data.dvc md5 {lin.data_md5} at git {lin.data_git_rev or '-'}",
            f"              {lin.data_uri}",
            f"  <- features feature service {lin.feature_service}",
            f"  <- code     git {lin.code_revision}",
        ]
    )


def describe_labels(metadata: dict) -> str:
    """The model's labels in words, or why they are unknown (a model logged before label specs)."""
    try:
        return ModelLabels.from_metadata(metadata).describe()
    except ValueError as exc:
        return f"labels not recorded ({exc})"


def run(settings: Settings, uri: str) -> Lineage:
    name, version, alias = parse_model_uri(uri)
    settings = settings.model_copy(update={"model_name": name})
    if version is not None:
        mv = mlflow_registry.require_version(settings, version)  # VersionNotFound lists those that exist
    elif alias is not None:
        mv = mlflow_registry.version_or_none(settings, alias)
        if mv is None:
            raise mlflow_registry.VersionNotFound(
                f"models:/{name}@{alias} does not exist: no version of {name!r} carries @{alias}"
            )
    else:  # parse_model_uri's pattern always yields one of the two
        raise BadModelUri(f"{uri!r} names neither a version nor an alias")
    r = mlflow_registry.get_run(settings, mv.run_id)
    tags = {**r.data.tags, **(mv.tags or {})}  # the version carries copies; either source will do
    inputs = r.inputs.dataset_inputs if r.inputs else []
    dataset = inputs[0].dataset if inputs else None
    return Lineage(
        model_name=name,
        version=str(mv.version),
        aliases=sorted(mv.aliases or []),
        run_id=mv.run_id,
        run_name=r.info.run_name or "",
        experiment_id=r.info.experiment_id,
        data_md5=tags.get("data.md5", "unknown"),
        data_git_rev=tags.get("data.git_rev", ""),
        data_uri=tags.get("data.uri", ""),
        dataset_name=dataset.name if dataset else "",
        dataset_digest=dataset.digest if dataset else "",
        feature_service=tags.get("feature_service", "unknown"),
        code_revision=tags.get("code.revision", "unknown"),
        gate_passed=(mv.tags or {}).get("gate.passed", "not run"),
        promoted_by=(mv.tags or {}).get("promotion.by", ""),
        labels=describe_labels(
            mlflow_registry.model_info(settings, f"models:/{name}/{mv.version}").metadata or {}
        ),
    )
