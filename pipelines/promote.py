"""Stage: promote a registered version to an alias (``champion`` by default) only on passing gates,
and roll back to the previous champion.

The gates (pipelines.validate_model) include "not worse than the champion" on the golden set, so a
version reaches ``champion`` only with evidence attached to it. The champion it replaces keeps the
``previous`` alias, which is what `lightbox rollback` restores. Who, when and why are tags on the
versions involved.

Each alias move is a transaction. Before it, the target must load: its files match the digest the
gates recorded, and the model answers a probe batch. The move itself is a compare-and-set under the
registry's alias lock (``mlflow_registry.alias_lock``): the aliases are read again, and if the champion
is no longer the one the verdict was compared with (another promotion or rollback landed while the
gates ran), nothing is written and the caller is told who moved it. Aliases and history tags are
written under the lock, then read back.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from lightbox.adapters import mlflow_registry
from lightbox.aliases import check_alias
from lightbox.settings import Settings

if TYPE_CHECKING:
    from pipelines.validate_model import GateReport


class PromotionRefused(RuntimeError):
    """No alias moved; the message says why and what to do (the CLI prints it as one red line).

    ``final``: the same call would be refused again (a verdict, a missing target); a DAG task fails
    without retrying. A lost race (``AliasMoved``, ``RegistryBusy``) is worth another try.
    """

    final = True


class GateFailed(PromotionRefused):
    """The version did not pass its gates; the message lists every failing check."""


class RollbackImpossible(PromotionRefused):
    """There is no previous version to roll back to."""


class TargetUnloadable(PromotionRefused):
    """The version an alias would move to does not load: files not the judged ones, or no answer."""


class AliasMoved(PromotionRefused):
    """The compare-and-set lost: the alias moved since it was read; the message names who moved it."""

    final = False


class RegistryBusy(PromotionRefused):
    """The alias lock stayed held by someone else."""

    final = False


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
    """The alias that remembers what ``alias`` pointed at before: ``previous`` for the champion. Both
    are checked (BadAlias) before anything is read or moved."""
    previous = settings.previous_alias if alias == settings.champion_alias else f"{alias}-previous"
    check_alias(alias)
    return check_alias(previous)


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def resolve_version(settings: Settings, version: str | None) -> str:
    """The version to act on: the one given (VersionNotFound, naming those that exist, when the registry
    has no such version), else the newest candidate (the one at @challenger)."""
    if version:
        return str(mlflow_registry.require_version(settings, str(version)).version)
    return str(mlflow_registry.version_by_alias(settings, settings.challenger_alias).version)


def _failure(settings: Settings, version: str, alias: str, report: GateReport) -> GateFailed:
    return GateFailed(
        f"{settings.model_name} v{version} failed its gates, not promoted to @{alias}:\n  "
        + "\n  ".join(report.refusal_lines())
        + (f"\nreport: {report.report_uri}/report.html" if report.report_uri else "")
    )


def _shadow_verdict(settings: Settings, version: str, report: GateReport):
    """The shadow requirement's checks on the version's recorded shadow agreement (None: none set)."""
    from pipelines.gates import GateVerdict, shadow_checks

    tags = dict(mlflow_registry.get_version(settings, version).tags or {})
    checks, notes = shadow_checks(tags, report.labels, settings)
    return GateVerdict(checks, notes) if checks else None


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


def verify_target(
    settings: Settings, version: str, alias: str, *, judged: mlflow_registry.ArtifactDigest | None = None
) -> None:
    """Raise TargetUnloadable unless ``version`` loads as serving will load it (files checked against
    the recorded digest) and answers a probe batch with one finite row per image.

    ``judged``: in a dry run, the digest of the files the gates just measured and did not record; the
    files must match it instead (a never-gated version can then be asked "would it pass?")."""
    import torch

    from lightbox.imaging import MODEL_INPUT_SIZE
    from training.model import split_output

    who = f"{settings.model_name} v{version}"
    try:
        model, found = mlflow_registry.load_checked(settings, version, allow_unverified=judged is not None)
    except mlflow_registry.ArtifactMismatch as exc:
        raise TargetUnloadable(
            f"@{alias} not moved: {exc}; restore its artifacts, or promote another version"
        ) from None
    except mlflow_registry.ArtifactError as exc:  # unverified: the message says to run its gates
        raise TargetUnloadable(f"@{alias} not moved: {exc}") from None
    except Exception as exc:  # whatever stops it loading here stops the server too: refuse, say what
        raise TargetUnloadable(
            f"@{alias} not moved: {who} does not load ({type(exc).__name__}: {exc}); "
            "check its artifacts in the registry"
        ) from exc
    if judged is not None and found != judged:
        raise TargetUnloadable(f"@{alias} not moved: {who}'s files changed while its gates ran")
    probe = torch.randint(
        0,
        256,
        (2, 3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(0),
    )
    try:
        with torch.inference_mode():
            scores, tags = split_output(model(probe).float())
    except Exception as exc:  # a model that loads but cannot run a batch would fail every request
        raise TargetUnloadable(
            f"@{alias} not moved: {who} loads but fails a probe batch ({type(exc).__name__}: {exc})"
        ) from exc
    if tuple(tags.shape) != (2, len(model.tag_names)) or not bool(torch.isfinite(tags).all()):
        raise TargetUnloadable(
            f"@{alias} not moved: {who} answers a probe batch with non-finite or misshapen tags"
        )
    if model.config.has_score and not bool(torch.isfinite(scores).all()):
        raise TargetUnloadable(f"@{alias} not moved: {who} answers a probe batch with non-finite scores")


def _holder(actor: str, action: str) -> str:
    return f"{actor} ({socket.gethostname()} pid {os.getpid()}): {action}"


@contextlib.contextmanager
def _locked(settings: Settings, alias: str, holder: str) -> Iterator[None]:
    """The alias lock, its timeout reported as a refusal (only the acquiring is translated: an error
    raised while holding it is the caller's)."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(mlflow_registry.alias_lock(settings, alias, holder))
    except mlflow_registry.AliasLockTimeout as exc:
        raise RegistryBusy(str(exc)) from None
    with stack:
        yield


def _alias_version(settings: Settings, alias: str) -> str | None:
    mv = mlflow_registry.version_or_none(settings, alias)
    return None if mv is None else str(mv.version)


def _moved_by(settings: Settings, version: str | None) -> str:
    """Who put ``version`` where it is, from its tags: "by alice at 2026-...", or ""."""
    if version is None:
        return ""
    tags = mlflow_registry.get_version(settings, version).tags or {}
    who, when = tags.get("promotion.by"), tags.get("promotion.at")
    return f" (by {who} at {when})" if who and when else ""


def _confirm(settings: Settings, alias: str, version: str | None) -> None:
    """Read the alias back after writing it: a writer that bypasses the lock (a script calling MLflow
    directly) is caught here rather than discovered by a rollback later."""
    now = _alias_version(settings, alias)
    if now != version:
        raise AliasMoved(
            f"@{alias} reads v{now} right after it was set to v{version}: something moved it without the "
            "promotion lock; check the registry's aliases and tags"
        )


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
    """Gate, check the target loads, then move ``alias`` to ``version`` if it still points where the
    verdict was compared with. Raises GateFailed with every reason, TargetUnloadable, AliasMoved (who
    won) or RegistryBusy otherwise; nothing moves then."""
    from pipelines import validate_model

    alias = alias or settings.champion_alias
    previous_alias = previous_alias_for(alias, settings)
    version = str(version)
    current_version = _alias_version(settings, alias)
    if current_version == version:
        return PromotionResult(
            settings.model_name, version, alias, False, f"v{version} is already @{alias}", dry_run
        )

    # Measured evidence is reused when it was taken on today's golden set; the decision is made now
    # (today's thresholds, today's champion), and recorded unless this is a dry run.
    report = validate_model.run(settings, version, record=not dry_run, reuse=reuse_evidence)
    if not report.passed:
        raise _failure(settings, version, alias, report)
    shadow = _shadow_verdict(settings, version, report)
    if shadow is not None and not shadow.passed:
        raise GateFailed(
            f"{settings.model_name} v{version} passed its gates but not the shadow requirement, not promoted "
            f"to @{alias}:\n  " + "\n  ".join(shadow.reasons + [f"note: {n}" for n in shadow.notes])
        )
    # The verdict's regression check compared with this champion (read by the gates, not before them):
    # the compare-and-set below moves the alias only if it is still there.
    expected = report.champion_version if alias == settings.champion_alias else current_version
    # A dry run recorded no digest: check the files against the ones its gates just measured.
    verify_target(settings, version, alias, judged=report.artifacts if dry_run else None)
    summary = report.verdict.summary() + ("" if shadow is None else "\n" + shadow.summary())
    if dry_run:
        return PromotionResult(
            settings.model_name,
            version,
            alias,
            False,
            f"dry run: would move @{alias} from {_v(expected)} to v{version}\n{summary}",
            True,
            expected,
            report.report_uri,
        )

    with _locked(settings, alias, _holder(actor, f"promote v{version} to @{alias}")):
        now = _alias_version(settings, alias)
        if now == version:  # a concurrent promotion of this same version won: the goal holds
            return PromotionResult(
                settings.model_name, version, alias, False, f"v{version} is already @{alias}", False
            )
        if now != expected:
            raise AliasMoved(
                f"{settings.model_name} v{version} not promoted: @{alias} moved from "
                f"{_v(expected)} to {_v(now)}{_moved_by(settings, now)} while v{version} was gated, and "
                f"its verdict compared it with {_v(expected)}; run `lightbox promote --version {version}` "
                f"again to judge it against {_v(now)}"
            )
        if now is not None:
            remembered = _alias_version(settings, previous_alias)
            mlflow_registry.set_alias(settings, now, previous_alias)
            try:
                mlflow_registry.set_alias(settings, version, alias)
            except Exception:
                # The registry refused the alias itself: @previous goes back to what it was, so a refusal
                # leaves the rollback history as it found it.
                _restore(settings, previous_alias, remembered)
                raise
            mlflow_registry.set_version_tags(
                settings, now, {"demoted.at": _now(), "demoted.by": actor, "demoted.for": version}
            )
        else:
            mlflow_registry.set_alias(settings, version, alias)
        mlflow_registry.set_version_tags(
            settings,
            version,
            {
                "promotion.alias": alias,
                "promotion.at": _now(),
                "promotion.by": actor,
                "promotion.reason": reason or "gates passed",
                "promotion.previous_version": now or "",
            },
        )
        _confirm(settings, alias, version)
    return PromotionResult(settings.model_name, version, alias, True, summary, False, now, report.report_uri)


def _restore(settings: Settings, alias: str, version: str | None) -> None:
    if version is None:
        mlflow_registry.delete_alias(settings, alias)
    else:
        mlflow_registry.set_alias(settings, version, alias)


def _v(version: str | None) -> str:
    return "nothing" if version is None else f"v{version}"


def rollback(
    settings: Settings,
    *,
    alias: str | None = None,
    dry_run: bool = False,
    actor: str = "unknown",
    reason: str = "",
) -> RollbackResult:
    """Point ``alias`` back at its ``previous`` version. ``previous`` then moves one step further
    back (to what that version had replaced), so repeated rollbacks walk the promotion history.

    The restored version must load first (TargetUnloadable otherwise), and both aliases must still be
    where they were read when the lock is taken (AliasMoved otherwise); nothing moves on a refusal."""
    alias = alias or settings.champion_alias
    previous_alias = previous_alias_for(alias, settings)
    target = mlflow_registry.version_or_none(settings, previous_alias)
    if target is None:
        raise RollbackImpossible(f"{settings.model_name} has no @{previous_alias}: nothing to roll back to")
    restored = str(target.version)
    current_version = _alias_version(settings, alias)
    older = (target.tags or {}).get("promotion.previous_version") or None
    if older in (restored, current_version):
        older = None  # never leave `previous` pointing at what is (or was just) live
    verify_target(settings, restored, alias)
    if dry_run:
        return RollbackResult(settings.model_name, alias, restored, current_version, older, True)

    with _locked(settings, alias, _holder(actor, f"roll @{alias} back to v{restored}")):
        now = (_alias_version(settings, alias), _alias_version(settings, previous_alias))
        if now != (current_version, restored):
            raise AliasMoved(
                f"{settings.model_name} not rolled back: @{alias} and @{previous_alias} moved to "
                f"{_v(now[0])} and {_v(now[1])}{_moved_by(settings, now[0])} since they were read as "
                f"{_v(current_version)} and v{restored}; check them, then run `lightbox rollback` again"
            )
        mlflow_registry.set_alias(settings, restored, alias)
        if older is None:
            mlflow_registry.delete_alias(settings, previous_alias)
        else:
            mlflow_registry.set_alias(settings, older, previous_alias)
        now_at = _now()
        why = reason or "rollback"
        if current_version is not None:
            mlflow_registry.set_version_tags(
                settings,
                current_version,
                {
                    "rollback.at": now_at,
                    "rollback.by": actor,
                    "rollback.reason": why,
                    "rollback.restored": restored,
                },
            )
        mlflow_registry.set_version_tags(
            settings,
            restored,
            {
                "promotion.alias": alias,
                "promotion.at": now_at,
                "promotion.by": actor,
                "promotion.reason": f"rollback from v{current_version}: {why}",
            },
        )
        _confirm(settings, alias, restored)
    return RollbackResult(settings.model_name, alias, restored, current_version, older)
