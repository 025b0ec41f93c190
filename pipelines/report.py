"""The gate report a reviewer reads: markdown (text + tables) and self-contained HTML (with plots).

Pure rendering from a GateReport; the plots are embedded as base64 PNGs so the single HTML artifact
opens in the MLflow UI's artifact viewer with nothing else to fetch.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lightbox.manifest import tags_matrix

if TYPE_CHECKING:
    from pipelines.validate_model import GateReport


def _fmt(v: float | None) -> str:
    return "missing" if v is None else f"{v:.4f}"


def _label_lines(report: GateReport) -> list[str]:
    """What the model answers: the checks that apply follow from it."""
    labels = report.labels
    if labels is None:
        return ["- labels: not recorded in the model's metadata"]
    tags = ", ".join(labels.tag_names) if labels.tag_names else "none (score-only model)"
    if labels.score_range is None:
        score = "none (tags-only model)"
    else:
        low, high = labels.score_range
        score = f"{labels.score_name or 'score'} on {low:g}..{high:g} (MAE and score moves: fractions of it)"
    return [f"- tags ({len(labels.tag_names)}): {tags}", f"- score: {score}"]


def _header(report: GateReport) -> list[str]:
    verdict = "PASSED" if report.passed else "FAILED"
    return [
        f"# Gates for {report.model_name} v{report.version}: {verdict}",
        "",
        f"- checked at: {report.checked_at}",
        *_label_lines(report),
        f"- golden set: `{report.golden_md5 or 'not versioned'}`",
        f"- compared with champion: {('v' + report.champion_version) if report.champion_version else 'none'}",
        "",
        "## Notes",
        "",
        *([f"- {n}" for n in report.verdict.notes] or ["- none"]),
        "",
    ]


def _checks_table(report: GateReport) -> list[str]:
    rows = ["| check | value | needs | result |", "| --- | --- | --- | --- |"]
    for c in report.verdict.checks:
        need = "missing" if c.threshold is None else f"{c.op} {c.threshold:.4g}"
        result = "pass" if c.passed else f"**FAIL** {c.detail}".strip()
        rows.append(f"| {c.name} | {_fmt(c.value)} | {need} | {result} |")
    return rows


def _evidence_table(report: GateReport, champion: Mapping[str, float | None] | None) -> list[str]:
    rows = ["| evidence | this version | champion |", "| --- | --- | --- |"]
    for k in sorted(report.evidence):
        ref = None if champion is None else champion.get(k)
        rows.append(f"| {k} | {_fmt(report.evidence[k])} | {'-' if champion is None else _fmt(ref)} |")
    return rows


def render_markdown(report: GateReport, champion: Mapping[str, float | None] | None = None) -> str:
    lines = _header(report) + ["## Checks", ""] + _checks_table(report)
    if report.runtime_tags:  # not a gate: which runtime serves the version, and why
        lines += ["", "## Serving runtime", ""] + [
            f"- **{k}**: {v}" for k, v in sorted(report.runtime_tags.items())
        ]
    if report.details:
        lines += ["", "## Details", ""] + [f"- **{k}**: {v}" for k, v in sorted(report.details.items()) if v]
    lines += ["", "## Evidence", ""] + _evidence_table(report, champion)
    return "\n".join(lines) + "\n"


def _ladders(preds: pd.DataFrame) -> dict[str, dict[str, list[float]]]:
    """Normalised predicted score by level, per distortion kind and source group (the synthetic grid)."""
    ladder: dict[str, dict[str, list[float]]] = {}
    for group, rows in preds.groupby("group"):
        base = float(rows[rows["kind"] == "none"]["score_unit"].iloc[0])
        for kind, g in rows[rows["kind"] != "none"].groupby("kind"):
            ladder.setdefault(str(kind), {})[str(group)] = [base, *g.sort_values("level")["score_unit"]]
    return ladder


def _score_figures(report: GateReport, preds: pd.DataFrame) -> dict[str, bytes]:
    from training import plots

    scored = preds[np.isfinite(preds["true_unit"].to_numpy(np.float64))]
    out = {}
    if not scored.empty:
        out["score_pred_vs_true"] = plots.png_bytes(
            plots.score_scatter(scored["score_unit"].to_numpy(), scored["true_unit"].to_numpy(), "golden set")
        )
    if "kind" in preds.columns:
        out["score_by_level"] = plots.png_bytes(plots.ladders(_ladders(preds)))
        by_kind: dict[str, float] = {}
        for k, v in report.evidence.items():
            if k.startswith("golden.srocc."):
                if v is None:
                    raise ValueError(f"{k} has no value although the report holds golden-set predictions")
                by_kind[k.removeprefix("golden.srocc.")] = v
        out["srocc_per_distortion"] = plots.png_bytes(plots.srocc_by_kind(by_kind))
    return out


def _tag_figures(preds: pd.DataFrame) -> dict[str, bytes]:
    from training import plots
    from training.metrics import expected_calibration_error

    names = [c[2:] for c in preds.columns if c.startswith("p:")]
    if not names:
        return {}
    probs = preds[[f"p:{n}" for n in names]].to_numpy(np.float64)
    labels = tags_matrix(preds["tags"], names).astype(np.float64)
    return {
        "tags_pr_curves": plots.png_bytes(plots.pr_curves(probs, labels, names, "golden set: PR curves")),
        "tags_calibration": plots.png_bytes(
            plots.calibration(probs, labels, expected_calibration_error(probs, labels))
        ),
    }


def figures(report: GateReport) -> dict[str, bytes]:
    """PNG plots of the golden predictions (empty when nothing was predicted). Scores are plotted
    normalised (0..1 of the model's range); the per-level plots only for the synthetic grid."""
    preds = report.preds
    if preds is None or preds.empty:
        return {}
    out = _score_figures(report, preds) if "score_unit" in preds.columns else {}
    return out | _tag_figures(preds)


_TITLES = {
    "score_pred_vs_true": "Predicted against labelled score (golden set)",
    "score_by_level": "Score by distortion level, one line per source image",
    "srocc_per_distortion": "SROCC per distortion type",
    "tags_pr_curves": "Tags: precision-recall curves",
    "tags_calibration": "Tags: calibration (n = pairs per bin)",
}

_CSS = (
    "body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
    "table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.2rem .5rem;"
    "text-align:left}th{background:#f4f4f4}code{background:#f4f4f4;padding:0 .2rem}"
    "img{max-width:100%;display:block;margin:.5rem 0 1.5rem}"
)


def render_html(report: GateReport, champion: Mapping[str, float | None] | None = None) -> str:
    """The markdown rendered as HTML (tables as tables) with every plot inline as a data URI: one file
    that the MLflow artifact viewer shows whole."""
    from markdown_it import MarkdownIt

    # html=False: tag names and details are user text; any markup in them is shown, never interpreted.
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    body = [md.render(render_markdown(report, champion))]
    plots = figures(report)
    if plots:
        body.append("<h2>Plots</h2>")
    for name, png in plots.items():
        data = base64.b64encode(png).decode()
        title = html.escape(_TITLES.get(name, name))
        body.append(f'<h3>{title}</h3><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"/>')
    title = html.escape(f"{report.model_name} v{report.version} gates")
    head = f"<head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head>"
    return f"<!doctype html><html>{head}<body>{''.join(body)}</body></html>\n"
