"""Stage 2: data tests on the built dataset, before anything trains on it.

(a) Image integrity: every manifest row's file exists, decodes within our limits and has a sane size.
    Bad images are moved (never deleted) to ``<quarantine_dir>/<timestamp>/`` and their rows dropped
    from manifest.csv; too many of them fails the stage, since that means a broken build, not bad luck.
(b) A great-expectations suite on the manifest: ids, scores, splits, tag vocabulary, no nulls, and no
    source image in two splits (which would leak test scenes into training).
(c) A readable report (Markdown + HTML) in ``<reports_dir>/``, written before any failure is raised.
"""

from __future__ import annotations

import html
import io
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from lightbox.imaging import ImageDecodeError, decode_image
from lightbox.settings import TAG_VOCABULARY, Settings
from pipelines.data import MANIFEST_COLUMNS, MANIFEST_NAME, TAG_SEPARATOR, read_manifest, write_manifest

MAX_IMAGE_SIDE = 8192
SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")
NUMERIC_COLUMNS: tuple[str, ...] = ("score", "max_level", "width", "height")
REPORT_NAME = "data_validation"
_EXAMPLES = 5  # unexpected values shown per expectation


class DataValidationError(RuntimeError):
    """The dataset failed validation; the message summarises why and points at the full report."""

    def __init__(self, message: str, result: DataValidationResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class CheckOutcome:
    check: str  # what a reader wants to know ("score is between 0 and 1")
    expectation: str  # how it was tested (the GE expectation type and column)
    success: bool
    observed: str
    unexpected: tuple[str, ...] = ()


@dataclass(frozen=True)
class DataValidationResult:
    passed: bool
    n_images: int  # rows left in the manifest after quarantine
    quarantined: list[tuple[str, str]]  # (image_id, reason)
    report_md: Path
    report_html: Path
    quarantine_path: Path | None = None
    failures: list[str] = field(default_factory=list)
    checks: list[CheckOutcome] = field(default_factory=list)


def run(settings: Settings) -> DataValidationResult:
    """Validate settings.data_dir in place; raise DataValidationError (after the report) on any failure."""
    manifest_path = settings.data_dir / MANIFEST_NAME
    failures: list[str] = []
    quarantined: list[tuple[str, str]] = []
    quarantine_path: Path | None = None
    checks: list[CheckOutcome] = []
    n_images = 0
    if not manifest_path.is_file():
        failures.append(f"manifest not found at {manifest_path}: run the data stage first")
    else:
        header, rows = read_manifest(manifest_path)
        bad = find_bad_images(rows, settings)
        if bad:
            quarantine_path = quarantine(bad, header, rows, settings)
            kept = [row for i, row in enumerate(rows) if i not in bad]
            write_manifest(manifest_path, header, kept)
            quarantined = [(rows[i].get("image_id") or f"<row {i + 2}>", reason) for i, reason in bad.items()]
            rows = kept
        failures += _quarantine_failures(len(quarantined), len(rows) + len(quarantined), settings)
        n_images = len(rows)
        checks = run_expectations(manifest_frame(rows, header))
        failures += [_describe_failure(c) for c in checks if not c.success]

    report_md, report_html = (
        settings.reports_dir / f"{REPORT_NAME}.md",
        settings.reports_dir / f"{REPORT_NAME}.html",
    )
    result = DataValidationResult(
        passed=not failures,
        n_images=n_images,
        quarantined=quarantined,
        report_md=report_md,
        report_html=report_html,
        quarantine_path=quarantine_path,
        failures=failures,
        checks=checks,
    )
    write_report(result, manifest_path)
    if failures:
        summary = "\n".join(f"  - {f}" for f in failures)
        raise DataValidationError(
            f"data validation failed ({len(failures)} problem(s)):\n{summary}\nfull report: {report_md}",
            result,
        )
    return result


# --- (a) image integrity -----------------------------------------------------------------------------


def find_bad_images(rows: list[dict[str, str]], settings: Settings) -> dict[int, str]:
    """Row index -> reason, for every row whose image is missing, undecodable or out of size bounds."""
    data_dir = settings.data_dir.resolve()
    bad = {}
    for i, row in enumerate(rows):
        reason = check_image(data_dir, row.get("path") or "", settings)
        if reason is not None:
            bad[i] = reason
    return bad


def check_image(data_dir: Path, rel_path: str, settings: Settings) -> str | None:
    """The reason this image is unusable, or None when it is fine."""
    if not rel_path:
        return "no path in manifest"
    path = (data_dir / rel_path).resolve()
    if not path.is_relative_to(data_dir):
        return f"path {rel_path!r} points outside the data folder"
    if not path.is_file():
        return "file is missing"
    data = path.read_bytes()
    try:
        decode_image(data, max_pixels=settings.max_pixels, min_side=settings.min_image_side)
    except ImageDecodeError as exc:
        return str(exc)
    # Header size, not the decoded one: decode_image may decode JPEGs at reduced size (draft mode).
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
    if max(w, h) > MAX_IMAGE_SIDE:
        return f"image is {w}x{h}, over the maximum side of {MAX_IMAGE_SIDE}"
    return None


def quarantine(
    bad: dict[int, str], header: list[str], rows: list[dict[str, str]], settings: Settings
) -> Path:
    """Move the bad files (those that exist inside data_dir) to a fresh timestamped folder; log why."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = settings.quarantine_dir / stamp
    target.mkdir(parents=True, exist_ok=False)
    data_dir = settings.data_dir.resolve()
    log = []
    for i, reason in bad.items():
        rel = rows[i].get("path") or ""
        src = (data_dir / rel).resolve() if rel else None
        if src is not None and src.is_relative_to(data_dir) and src.is_file():
            dest = target / src.relative_to(data_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, dest)
        log.append({"image_id": rows[i].get("image_id") or "", "path": rel, "reason": reason})
    # The removed manifest rows go with the files, so a quarantined image can be restored by hand.
    write_manifest(target / "quarantined.csv", ("image_id", "path", "reason"), log)
    write_manifest(target / MANIFEST_NAME, header, [rows[i] for i in bad])
    return target


def _quarantine_failures(n_bad: int, n_total: int, settings: Settings) -> list[str]:
    if n_total == 0:
        return ["manifest has no rows"]
    fraction = n_bad / n_total
    if fraction > settings.max_quarantine_fraction:
        return [
            f"quarantined {n_bad} of {n_total} images ({fraction:.1%}), over the limit of "
            f"{settings.max_quarantine_fraction:.1%}"
        ]
    return []


# --- (b) expectations ---------------------------------------------------------------------------------


def manifest_frame(rows: list[dict[str, str]], header: list[str]) -> pd.DataFrame:
    """The manifest as a DataFrame: empty cells -> null, numeric columns coerced (non-numbers -> null)."""
    df = pd.DataFrame(rows, columns=header).replace("", None)
    for column in NUMERIC_COLUMNS:
        if column in df:
            df[column] = pd.to_numeric(df[column], errors="coerce")
    return df


def tag_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (image, tag): GE checks values, so the list-valued column is exploded first."""
    if "tags" not in df:
        return pd.DataFrame({"tag": pd.Series(dtype=object)})
    tags = df["tags"].dropna().str.split(TAG_SEPARATOR).explode()
    return pd.DataFrame({"tag": tags.reset_index(drop=True)})


def source_split_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Distinct (source_id, split) pairs: a source id appearing twice here sits in two splits."""
    if "source_id" not in df or "split" not in df:
        return pd.DataFrame({"source_id": pd.Series(dtype=object), "split": pd.Series(dtype=object)})
    pairs = df[["source_id", "split"]].dropna().drop_duplicates()
    return pairs.sort_values(["source_id", "split"]).reset_index(drop=True)


def _suites(gx: Any) -> dict[str, list[Any]]:
    """Expectations per frame; meta["check"] is the sentence the report shows."""
    e = gx.expectations

    def check(text: str) -> dict[str, str]:
        return {"check": text}

    manifest = [
        e.ExpectTableColumnsToMatchSet(
            column_set=list(MANIFEST_COLUMNS),
            exact_match=True,
            meta=check("manifest has exactly the expected columns"),
        ),
        e.ExpectTableRowCountToBeBetween(min_value=1, meta=check("manifest is not empty")),
        *[
            e.ExpectColumnValuesToNotBeNull(column=c, meta=check(f"{c} is present in every row"))
            for c in MANIFEST_COLUMNS
        ],
        e.ExpectColumnValuesToBeUnique(column="image_id", meta=check("image_id is unique")),
        e.ExpectColumnValuesToBeBetween(
            column="score", min_value=0.0, max_value=1.0, meta=check("score is between 0 and 1")
        ),
        e.ExpectColumnValuesToBeInSet(
            column="split", value_set=list(SPLIT_NAMES), meta=check("split is train, validation or test")
        ),
        e.ExpectColumnValuesToBeBetween(
            column="max_level", min_value=0, max_value=5, meta=check("max_level is between 0 and 5")
        ),
        e.ExpectColumnValuesToMatchRegex(
            column="path",
            regex=r"^images/[^/\\]+\.(?:png|jpg)$",
            meta=check("path is images/<file>.png|.jpg"),
        ),
    ]
    tags = [
        e.ExpectColumnValuesToBeInSet(
            column="tag", value_set=list(TAG_VOCABULARY), meta=check("every tag is in TAG_VOCABULARY")
        )
    ]
    source_splits = [
        e.ExpectColumnValuesToBeUnique(
            column="source_id", meta=check("no source_id is in two splits (no leakage across splits)")
        )
    ]
    return {"manifest": manifest, "tags": tags, "source_splits": source_splits}


def run_expectations(df: pd.DataFrame) -> list[CheckOutcome]:
    """Run the suites on the manifest and its derived frames in an ephemeral (in-memory) GX context."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"  # before the context exists: it reads this at creation
    import great_expectations as gx  # imported here: ~4 s, and only this stage needs it
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas(name="lightbox")
    frames = {"manifest": df, "tags": tag_frame(df), "source_splits": source_split_frame(df)}
    outcomes = []
    for name, expectations in _suites(gx).items():
        batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(f"{name}-all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{name}-suite", expectations=expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}-validation", data=batch, suite=suite)
        )
        validation = definition.run(batch_parameters={"dataframe": frames[name]}, result_format="SUMMARY")
        outcomes += [_outcome(name, r) for r in validation.results]
    # GE returns results in its own order; sort failures first, then by check, for a stable report.
    return sorted(outcomes, key=lambda o: (o.success, o.check))


def _outcome(frame: str, r: Any) -> CheckOutcome:
    config = r.expectation_config
    column = config.kwargs.get("column")
    where = f"{frame}.{column}" if column else frame
    return CheckOutcome(
        check=config.meta.get("check", config.type) if config.meta else config.type,
        expectation=f"{config.type} ({where})",
        success=bool(r.success),
        observed=_observed(r),
        unexpected=tuple(_unique_str(r.result.get("partial_unexpected_list") or [])[:_EXAMPLES]),
    )


def _observed(r: Any) -> str:
    errors = _exception_messages(r.exception_info)
    if errors:
        return "error: " + "; ".join(errors)
    result = r.result or {}
    if "observed_value" in result:
        return str(result["observed_value"])
    if "unexpected_count" in result:
        return f"{result['unexpected_count']} unexpected of {result.get('element_count', '?')}"
    return ""


def _exception_messages(info: Any) -> list[str]:
    # A flat dict for the expectation itself, or one dict per metric when a metric failed to compute.
    if not isinstance(info, dict):
        return []
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    return sorted({str(e.get("exception_message")) for e in entries if e.get("raised_exception")})


def _unique_str(values: list[Any]) -> list[str]:
    return list(dict.fromkeys(str(v) for v in values))


def _describe_failure(c: CheckOutcome) -> str:
    detail = c.observed
    if c.unexpected:
        detail += f"; e.g. {', '.join(c.unexpected)}"
    return f"{c.check}: {detail}" if detail else c.check


# --- (c) report ---------------------------------------------------------------------------------------


def write_report(result: DataValidationResult, manifest_path: Path) -> None:
    result.report_md.parent.mkdir(parents=True, exist_ok=True)
    result.report_md.write_text(render_markdown(result, manifest_path), encoding="utf-8")
    result.report_html.write_text(render_html(result, manifest_path), encoding="utf-8")


def _summary_lines(result: DataValidationResult, manifest_path: Path) -> list[str]:
    return [
        f"Result: {'PASSED' if result.passed else 'FAILED'}",
        f"Manifest: {manifest_path}",
        f"Generated: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"Images in manifest after quarantine: {result.n_images}",
        f"Quarantined: {len(result.quarantined)}"
        + (f" (moved to {result.quarantine_path})" if result.quarantine_path else ""),
    ]


def _check_rows(result: DataValidationResult) -> list[list[str]]:
    return [
        [c.check, "pass" if c.success else "FAIL", c.observed, ", ".join(c.unexpected), c.expectation]
        for c in result.checks
    ]


_CHECK_HEADER = ["Check", "Result", "Observed", "Unexpected examples", "Expectation"]
_QUARANTINE_HEADER = ["image_id", "Reason"]


def render_markdown(result: DataValidationResult, manifest_path: Path) -> str:
    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        esc = [[cell.replace("|", "\\|").replace("\n", " ") for cell in row] for row in rows]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return lines + ["| " + " | ".join(row) + " |" for row in esc]

    out = ["# Data validation report", ""] + [f"- {line}" for line in _summary_lines(result, manifest_path)]
    if result.failures:
        out += ["", "## Failures", ""] + [f"- {f}" for f in result.failures]
    out += ["", "## Expectations", ""]
    out += table(_CHECK_HEADER, _check_rows(result)) if result.checks else ["(not run)"]
    out += ["", "## Quarantine", ""]
    out += (
        table(_QUARANTINE_HEADER, [list(q) for q in result.quarantined]) if result.quarantined else ["None."]
    )
    return "\n".join(out) + "\n"


def render_html(result: DataValidationResult, manifest_path: Path) -> str:
    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join(
            f"<tr class='{'fail' if 'FAIL' in row else ''}'>"
            + "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
            + "</tr>"
            for row in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    summary = "".join(f"<li>{html.escape(line)}</li>" for line in _summary_lines(result, manifest_path))
    failures = "".join(f"<li>{html.escape(f)}</li>" for f in result.failures)
    checks = table(_CHECK_HEADER, _check_rows(result)) if result.checks else "<p>(not run)</p>"
    quarantined = (
        table(_QUARANTINE_HEADER, [list(q) for q in result.quarantined])
        if result.quarantined
        else "<p>None.</p>"
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}tr.fail{background:#fdd}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Data validation</title>"
        f"<style>{style}</style></head><body><h1>Data validation report</h1><ul>{summary}</ul>"
        + (f"<h2>Failures</h2><ul>{failures}</ul>" if failures else "")
        + f"<h2>Expectations</h2>{checks}<h2>Quarantine</h2>{quarantined}</body></html>\n"
    )
