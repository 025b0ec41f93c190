"""Stage: promote a registered version to an alias (``champion`` by default) only on passing gates,
and roll back to the previous champion.

The gates (pipelines.validate_model) include "not worse than the champion" on the golden set, so a
version reaches ``champion`` only with evidence attached to it. The champion it replaces keeps the
``previous`` alias, which is what `lightbox rollback` restores. Who, when and why are tags on the
versions involved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from lightbox.adapters import mlflow_registry
from lightbox.settings import Settings

if TYPE_CHECKING:
    from pipelines.validate_model import GateReport


class GateFailed(RuntimeError):
    """The version did not pass its gates; the message lists every failing check."""


class RollbackImpossible(RuntimeError):
    """There is no previous version to roll back to."""


@dataclass(frozen=True)
class PromotionResult:
    model_name: str
    version: str
    alias: str
    promoted: bool
    summary: str
    dry_run: bool = False
    previous_version: str | None = None
    report_uri: str | None = None
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GateResult:
    """A version that passed its gates (a failing one raises GateFailed instead)."""

    model_name: str
    version: str
    alias: str  # the alias a promotion would move
    summary: str
    report_uri: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RollbackResult:
    model_name: str
    alias: str
    restored_version: str
    rolled_back_version: str | None
    previous_version: str | None  # what `previous` points at now (None: alias removed)
    dry_run: bool = False


def previous_alias_for(alias: str, settings: Settings) -> str:
    """The alias that remembers what ``alias`` pointed at before: ``previous`` for the champion."""
    return settings.previous_alias if alias == settings.champion_alias else f"{alias}-previous"


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def resolve_version(settings: Settings, version: str | None) -> str:
    """The version to act on: the one given, else the newest candidate (the one at @challenger)."""
    if version:
        return str(version)
    return str(mlflow_registry.version_by_alias(settings, settings.challenger_alias).version)


def _failure(settings: Settings, version: str, alias: str, report: GateReport) -> GateFailed:
    return GateFailed(
        f"{settings.model_name} v{version} failed its gates, not promoted to @{alias}:\n  "
        + "\n  ".join(report.verdict.reasons)
        + (f"\nreport: {report.report_uri}/report.html" if report.report_uri else "")
    )


def gate(settings: Settings, version: str | None = None, *, alias: str | None = None) -> GateResult:
    """Run (and record) the gates on ``version`` (default: the @challenger) before a promotion;
    raises GateFailed with every reason when they fail. What the promotion DAG's gate step runs."""
    from pipelines import validate_model

    alias = alias or settings.champion_alias
    version = resolve_version(settings, version)
    report = validate_model.run(settings, version)
    if not report.passed:
        raise _failure(settings, version, alias, report)
    return GateResult(settings.model_name, version, alias, report.verdict.summary(), report.report_uri)


def run(
    settings: Settings,
    version: str,
    *,
    alias: str | None = None,
    dry_run: bool = False,
    actor: str = "unknown",
    reason: str = "",
    reuse_evidence: bool = True,
) -> PromotionResult:
    """Gate, then move ``alias`` to ``version``; raises GateFailed with every reason otherwise."""
    from pipelines import validate_model

    alias = alias or settings.champion_alias
    version = str(version)
    current = mlflow_registry.version_or_none(settings, alias)
    current_version = None if current is None else str(current.version)
    if current_version == version:
        return PromotionResult(
            settings.model_name, version, alias, False, f"v{version} is already @{alias}", dry_run
        )

    # Measured evidence is reused when it was taken on today's golden set; the decision is made now
    # (today's thresholds, today's champion), and recorded unless this is a dry run.
    report = validate_model.run(settings, version, record=not dry_run, reuse=reuse_evidence)
    if not report.passed:
        raise _failure(settings, version, alias, report)
    summary = report.verdict.summary()
    if dry_run:
        return PromotionResult(
            settings.model_name,
            version,
            alias,
            False,
            f"dry run: would move @{alias} from {current_version or 'nothing'} to v{version}\n{summary}",
            True,
            current_version,
            report.report_uri,
        )

    previous_alias = previous_alias_for(alias, settings)
    if current_version is not None:
        mlflow_registry.set_alias(settings, current_version, previous_alias)
        mlflow_registry.set_version_tags(
            settings, current_version, {"demoted.at": _now(), "demoted.by": actor, "demoted.for": version}
        )
    mlflow_registry.set_alias(settings, version, alias)
    mlflow_registry.set_version_tags(
        settings,
        version,
        {
            "promotion.alias": alias,
            "promotion.at": _now(),
            "promotion.by": actor,
            "promotion.reason": reason or "gates passed",
            "promotion.previous_version": current_version or "",
        },
    )
    return PromotionResult(
        settings.model_name, version, alias, True, summary, False, current_version, report.report_uri
    )


def rollback(
    settings: Settings,
    *,
    alias: str | None = None,
    dry_run: bool = False,
    actor: str = "unknown",
    reason: str = "",
) -> RollbackResult:
    """Point ``alias`` back at its ``previous`` version. ``previous`` then moves one step further
    back (to what that version had replaced), so repeated rollbacks walk the promotion history."""
    alias = alias or settings.champion_alias
    previous_alias = previous_alias_for(alias, settings)
    target = mlflow_registry.version_or_none(settings, previous_alias)
    if target is None:
        raise RollbackImpossible(f"{settings.model_name} has no @{previous_alias}: nothing to roll back to")
    restored = str(target.version)
    current = mlflow_registry.version_or_none(settings, alias)
    current_version = None if current is None else str(current.version)
    older = (target.tags or {}).get("promotion.previous_version") or None
    if older in (restored, current_version):
        older = None  # never leave `previous` pointing at what is (or was just) live
    if dry_run:
        return RollbackResult(settings.model_name, alias, restored, current_version, older, True)

    mlflow_registry.set_alias(settings, restored, alias)
    if older is None:
        mlflow_registry.delete_alias(settings, previous_alias)
    else:
        mlflow_registry.set_alias(settings, older, previous_alias)
    now = _now()
    why = reason or "rollback"
    if current_version is not None:
        mlflow_registry.set_version_tags(
            settings,
            current_version,
            {"rollback.at": now, "rollback.by": actor, "rollback.reason": why, "rollback.restored": restored},
        )
    mlflow_registry.set_version_tags(
        settings,
        restored,
        {
            "promotion.alias": alias,
            "promotion.at": now,
            "promotion.by": actor,
            "promotion.reason": f"rollback from v{current_version}: {why}",
        },
    )
    return RollbackResult(settings.model_name, alias, restored, current_version, older)
