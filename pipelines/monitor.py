"""Stage: drift monitoring. Recent predictions of a served model version against what it answered on its
own test split at training (``lightbox.drift``): PSI for the score, rate change and Jensen-Shannon
divergence for each tag.

Recent predictions come from where they are stored: the results table the upload consumer and bulk
scoring write (``postgres``), or a bulk-scoring parquet folder (default: the catalog output). The
report is an MLflow run (metrics, the two distributions as plots, a markdown report) in the experiment
``<experiment>-monitor``; the version gets ``monitor.*`` tags. ``lightbox_monitor`` updates the DRIFT
Asset when the result says drifted, which can schedule retraining.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from lightbox import drift
from lightbox.adapters import mlflow_registry
from lightbox.settings import Settings

log = logging.getLogger(__name__)

MIN_RECENT = 50  # fewer recent predictions than this say nothing about a distribution
# The reference is the version's test split: a small dataset's holds a handful of photos, and deciles
# (the score PSI's bins) of fewer than 20 values are noise.
MIN_REFERENCE = 20


class NoReference(LookupError):
    """The version's training run logged no test-split predictions (trained before monitoring)."""


class NoPredictions(LookupError):
    """The source holds no predictions of this version: nothing to compare."""


@dataclass(frozen=True)
class Recent:
    scores: np.ndarray | None  # [N] on the model's scale; None: a tags-only model
    tag_probs: np.ndarray  # [N, K] in the reference's tag order


@dataclass
class MonitorResult:
    model_name: str
    version: str
    source: str
    recent_count: int
    drifted: bool
    reasons: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "source": self.source,
            "recent_count": self.recent_count,
            "drifted": self.drifted,
            "reasons": self.reasons,
            "metrics": self.metrics,
            "run_id": self.run_id,
            "note": self.note,
        }


def recent_from_rows(
    rows: list[tuple[float | None, dict[str, float]]], tag_names: tuple[str, ...], has_score: bool
) -> Recent:
    """(score, {tag: probability}) rows, newest first, as arrays in the reference's tag order (a tag the
    row lacks counts as 0: it was not in that model's answer)."""
    probs = np.array([[p.get(t, 0.0) for t in tag_names] for _, p in rows], float).reshape(-1, len(tag_names))
    scores = np.array([math.nan if s is None else s for s, _ in rows], float) if has_score else None
    return Recent(scores, probs)


def read_recent(settings: Settings, source: str, name: str, version: str, last: int) -> list:
    """The newest ``last`` (score, tag_probs) rows of ``name`` v``version`` from ``source``."""
    if source == "postgres":
        from lightbox.adapters import postgres

        if not settings.results_dsn:
            raise NoPredictions("source `postgres` needs LIGHTBOX_RESULTS_DSN (the results table's database)")
        conn = postgres.connect(settings.results_dsn)
        try:
            return postgres.recent_predictions(conn, settings.results_table, name, version, last)
        finally:
            conn.close()
    from lightbox.results import read_parts

    folder = Path(source)
    if not folder.is_dir():
        raise NoPredictions(f"{folder} is not a folder of bulk-scoring results (`lightbox score --out`)")
    table = read_parts(folder, ["score", "tag_probs", "model_name", "model_version", "error", "scored_at"])
    if table is None:
        others = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
        if others:  # a photo folder given by mistake would read as a healthy "no drift measured"
            raise NoPredictions(
                f"{folder} holds no bulk-scoring results but {len(others)} other files (e.g. {others[0]}): "
                "give the folder `lightbox score --out` wrote"
            )
        return []  # a results folder nothing was written to yet
    frame = table.to_pandas()
    frame = frame[(frame.model_name == name) & (frame.model_version == version) & frame.error.isna()]
    frame = frame.sort_values("scored_at", ascending=False).head(last)
    return [
        (None if s is None or s != s else float(s), dict(t or []))
        for s, t in zip(frame.score, frame.tag_probs, strict=True)
    ]


def reference_of(settings: Settings, run_id: str) -> drift.Reference:
    import mlflow.artifacts

    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{drift.REFERENCE_ARTIFACT}")
    except Exception as exc:  # MLflow raises several types for a missing artifact
        raise NoReference(
            f"run {run_id} logged no {drift.REFERENCE_ARTIFACT}: the version was trained before drift "
            "monitoring; retrain it (lightbox train) to monitor it"
        ) from exc
    return drift.parse_reference(text)


def run(
    settings: Settings,
    *,
    alias: str | None = None,
    version: str | None = None,
    source: str | None = None,
    last: int = 5000,
) -> MonitorResult:
    """Compare the newest ``last`` predictions of the version (default: the champion's) with its test
    split; log the report run and the version's ``monitor.*`` tags."""
    import mlflow

    mlflow_registry.configure(settings)
    if version is None:
        mv = mlflow_registry.version_or_none(settings, alias or settings.champion_alias)
        if mv is None:
            raise NoPredictions(
                f"no version at models:/{settings.model_name}@{alias or settings.champion_alias}"
            )
    else:
        mv = mlflow_registry.require_version(settings, version)
    version = str(mv.version)
    source = source or settings.catalog_out_path
    metadata = mlflow_registry.model_metadata(settings, version)
    score_range = metadata.get("score_range")
    reference = reference_of(settings, mv.run_id)
    rows = read_recent(settings, source, settings.model_name, version, last)
    result = MonitorResult(settings.model_name, version, source, len(rows), False, [])
    if len(rows) < MIN_RECENT:
        result.note = f"{len(rows)} recent predictions (fewer than {MIN_RECENT}): no drift measured"
        log.info("%s", result.note)
        return result
    n_reference = len(reference.score_unit if reference.score_unit is not None else reference.tag_probs)
    if n_reference < MIN_REFERENCE:
        result.note = (
            f"the version's test split holds {n_reference} predictions (fewer than {MIN_REFERENCE}): "
            "too few to compare recent predictions with; no drift measured (a larger dataset's test "
            "split makes it measurable)"
        )
        log.info("%s", result.note)
        return result
    recent = recent_from_rows(rows, reference.tag_names, reference.score_unit is not None)
    recent_unit = None
    if recent.scores is not None and score_range is not None:
        low, high = float(score_range[0]), float(score_range[1])
        recent_unit = (recent.scores - low) / (high - low)
    report = drift.compare(
        reference.tag_names,
        reference.score_unit,
        reference.tag_probs,
        recent_unit,
        recent.tag_probs,
        psi_threshold=settings.monitor_psi_threshold,
        js_threshold=settings.monitor_js_threshold,
        tag_threshold=settings.serve_tag_threshold,
    )
    result.drifted, result.reasons, result.metrics = report.drifted, report.reasons, report.metrics()
    mlflow.set_experiment(f"{settings.mlflow_experiment}-monitor")
    with mlflow.start_run(run_name=f"monitor {settings.model_name} v{version}") as monitor_run:
        mlflow.set_tags(
            {
                "lightbox.kind": "monitor",
                "model_version": version,
                "source": source,
                "drifted": str(report.drifted),
            }
        )
        mlflow.log_metrics({mlflow_metric(k): v for k, v in result.metrics.items() if math.isfinite(v)})
        _log_report(reference, recent_unit, report, settings, version, source)
        result.run_id = monitor_run.info.run_id
    mlflow_registry.set_version_tags(
        settings,
        version,
        {
            "monitor.checked_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "monitor.drifted": str(report.drifted).lower(),
            "monitor.score_psi": "" if report.score_psi is None else f"{report.score_psi:.4f}",
            "monitor.reasons": "; ".join(report.reasons)[:4000] or "-",
            "monitor.run_id": result.run_id or "",
        },
    )
    return result


def mlflow_metric(key: str) -> str:
    """A drift metric as an MLflow metric name (tag names are the user's words)."""
    import re

    return re.sub(r"[^\w\-. ]", "_", key)


def _log_report(
    reference: drift.Reference,
    recent_unit: np.ndarray | None,
    report: drift.DriftReport,
    settings: Settings,
    version: str,
    source: str,
) -> None:
    import mlflow
    from training import plots

    verdict = (
        "**DRIFTED**: " + "; ".join(report.reasons) if report.drifted else "no drift over the thresholds"
    )
    lines = [
        f"# Drift of {settings.model_name} v{version}",
        "",
        f"{report.recent_count} recent predictions from `{source}` against the version's test split "
        f"({len(reference.tag_probs)} images). {verdict}.",
        "",
        f"Thresholds: score PSI > {settings.monitor_psi_threshold:g}, a tag's JS divergence > "
        f"{settings.monitor_js_threshold:g}.",
        "",
    ]
    if report.score_psi is not None:
        lines += [f"Score PSI: {report.score_psi:.3f}", ""]
    if reference.tag_names:
        lines += ["| tag | rate at training | recent rate | JS divergence |", "|---|---:|---:|---:|"]
        ref, new, js = report.tag_rate_reference, report.tag_rate_recent, report.tag_js
        lines += [f"| {t} | {ref[t]:.3f} | {new[t]:.3f} | {js[t]:.3f} |" for t in reference.tag_names]
    with TemporaryDirectory() as tmp:
        (Path(tmp) / "report.md").write_text("\n".join(lines) + "\n")
        mlflow.log_artifact(str(Path(tmp) / "report.md"))
    if reference.score_unit is not None and recent_unit is not None:
        fig = plots.distributions(reference.score_unit, recent_unit, "score (normalised to its range)")
        mlflow.log_figure(fig, "plots/score_distribution.png")
        plots.plt.close(fig)
    if reference.tag_names:
        fig = plots.tag_rate_change(report.tag_rate_reference, report.tag_rate_recent)
        mlflow.log_figure(fig, "plots/tag_rates.png")
        plots.plt.close(fig)
