"""Stage: run the quality gates on a registered version and, if they pass, move the champion alias."""

from __future__ import annotations

from dataclasses import dataclass

from lightbox.adapters import mlflow_registry
from lightbox.settings import Settings
from pipelines.gates import GateVerdict, evaluate_gates


class GateFailed(RuntimeError):
    """The version did not pass its gates; the message lists every failing check."""


@dataclass(frozen=True)
class PromotionResult:
    model_name: str
    version: str
    alias: str
    promoted: bool
    summary: str


def run(settings: Settings, version: str, *, alias: str | None = None) -> PromotionResult:
    alias = alias or settings.champion_alias
    client = mlflow_registry.client(settings)
    mv = client.get_model_version(settings.model_name, version)
    metrics = client.get_run(mv.run_id).data.metrics
    verdict: GateVerdict = evaluate_gates(metrics, settings)
    client.set_model_version_tag(settings.model_name, version, "gate.passed", str(verdict.passed).lower())
    client.set_model_version_tag(settings.model_name, version, "gate.summary", verdict.summary())
    if not verdict.passed:
        raise GateFailed(
            f"{settings.model_name} v{version} failed its gates, not promoted to @{alias}:\n  "
            + "\n  ".join(verdict.reasons)
        )
    mlflow_registry.set_alias(settings, version, alias)
    return PromotionResult(settings.model_name, version, alias, True, verdict.summary())
