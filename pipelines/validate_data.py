"""Stage 2: data tests on the imported dataset, before anything trains on it.

(a) Image integrity: every manifest row's file exists, decodes within our limits, and has the size the
    manifest says; a file in images/ that no row names is an error too (it would be versioned). Bad
    files are moved (never deleted) to ``<quarantine_dir>/<timestamp>/`` with their rows; too many of
    them fails the stage. data/ is lightbox's own copy: the user's files are never touched, and a
    folder that is not a lightbox dataset is reported, not changed.
(b) A great-expectations suite on the manifest against the dataset's own label spec (labels.json):
    ids, paths, splits, scores within the declared range, tags in the declared vocabulary, no group in
    two splits (near duplicates would leak test photos into training), every trained tag in train.
(c) A readable report (Markdown + HTML) in ``<reports_dir>/``, with what the import quarantined, written
    before any failure is raised.
"""

from __future__ import annotations

import html
import io
import os
import shutil
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from lightbox import manifest
from lightbox.imaging import ImageDecodeError, decode_image, upright_size
from lightbox.manifest import IMAGES_SUBDIR, SPLITS, LabelSpec, ManifestError
from lightbox.photos import EXTENSIONS
from lightbox.settings import Settings
from pipelines import importer

NUMERIC_COLUMNS: tuple[str, ...] = ("score", "width", "height")
REPORT_NAME = "data_validation"
_EXAMPLES = 5  # unexpected values shown per expectation


class DataValidationError(RuntimeError):
    """The dataset failed validation; the message summarises why and points at the full report."""

    def __init__(self, message: str, result: DataValidationResult) -> None:
        super().__init__(message)
        self.result = result


# What the importer names its copies: the content id and the extension of the format it found.
STORED_PATH = (
    rf"^{IMAGES_SUBDIR}/[0-9a-f]{{16}}\.(?:{'|'.join(sorted({e[1:] for e in EXTENSIONS.values()}))})$"
)


@dataclass(frozen=True)
class CheckOutcome:
    check: str  # what a reader wants to know ("score is within the declared range")
    expectation: str  # how it was tested (the GE expectation type and column)
    success: bool
    observed: str
    unexpected: tuple[str, ...] = ()
    warning_only: bool = False  # reported, but does not fail the stage (a setting says so)


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
    import_problems: list[tuple[str, str]] = field(default_factory=list)  # (origin, reason) at import
    warnings: list[str] = field(default_factory=list)


def run(settings: Settings) -> DataValidationResult:
    """Validate settings.data_dir in place; raise DataValidationError (after the report) on any failure."""
    manifest_path = settings.data_dir / manifest.MANIFEST_NAME
    failures: list[str] = []
    warnings: list[str] = []
    quarantined: list[tuple[str, str]] = []
    quarantine_path: Path | None = None
    checks: list[CheckOutcome] = []
    n_images = 0
    report = importer.read_report(settings) or {}
    import_problems = [(p["origin"], p["reason"]) for p in report.get("problems", [])]
    try:
        header, rows = _read(settings.data_dir)
        spec = manifest.read_label_spec(settings.data_dir)
    except ManifestError as exc:
        failures.append(str(exc))
    else:
        bad = find_bad_images(rows, settings)
        unreferenced = find_unreferenced(rows, settings)
        if bad or unreferenced:
            quarantine_path = quarantine(bad, unreferenced, header, rows, settings)
            kept = [row for i, row in enumerate(rows) if i not in bad]
            manifest.write_csv(manifest_path, header, kept)
            # The spec's tag counts describe the rows that are left.
            manifest.write_label_spec(settings.data_dir, replace(spec, tag_counts=manifest.count_tags(kept)))
            quarantined = [(rows[i].get("image_id") or f"<row {i + 2}>", reason) for i, reason in bad.items()]
            quarantined += [(f"{IMAGES_SUBDIR}/{name}", "not in the manifest") for name in unreferenced]
            rows = kept
            spec = manifest.read_label_spec(settings.data_dir)
        failures += _quarantine_failures(len(quarantined), len(rows) + len(quarantined), settings)
        n_images = len(rows)
        checks = run_expectations(manifest_frame(rows, header), spec, settings)
        checks += [tags_in_train(rows, spec), golden_apart(rows, settings)]
        failures += [_describe_failure(c) for c in checks if not c.success and not c.warning_only]
        warnings += [_describe_failure(c) for c in checks if not c.success and c.warning_only]

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
        import_problems=import_problems,
        warnings=warnings,
    )
    write_report(result, manifest_path)
    if failures:
        summary = "\n".join(f"  - {f}" for f in failures)
        raise DataValidationError(
            f"data validation failed ({len(failures)} problem(s)):\n{summary}\nfull report: {report_md}",
            result,
        )
    return result


def _read(folder: Path) -> tuple[list[str], list[dict[str, str]]]:
    path = folder / manifest.MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"manifest not found at {path}: run `lightbox data import SOURCE` first")
    header, rows = manifest.read_csv(path)
    manifest.check_header(header, path)  # before anything is moved: a foreign file is never changed
    return header, rows


# --- (a) image integrity -----------------------------------------------------------------------------


def find_bad_images(rows: list[dict[str, str]], settings: Settings) -> dict[int, str]:
    """Row index -> reason, for every row whose image is missing, undecodable, out of size bounds, or
    not the size the manifest says."""
    data_dir = settings.data_dir.resolve()
    bad = {}
    for i, row in enumerate(rows):
        reason = check_image(data_dir, row, settings)
        if reason is not None:
            bad[i] = reason
    return bad


def find_unreferenced(rows: list[dict[str, str]], settings: Settings) -> list[str]:
    """Files in images/ that no manifest row names: DVC would version them all the same."""
    images = settings.data_dir / IMAGES_SUBDIR
    if not images.is_dir():
        return []
    named = {Path(r.get("path") or "").name for r in rows}
    return sorted(p.name for p in images.iterdir() if p.name not in named)


def check_image(data_dir: Path, row: dict[str, str], settings: Settings) -> str | None:
    """The reason this row's image is unusable, or None when it is fine."""
    rel_path = row.get("path") or ""
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
        w, h = upright_size(img)
    if (row.get("width"), row.get("height")) != (str(w), str(h)):
        return f"manifest says {row.get('width')}x{row.get('height')} but the image is {w}x{h}"
    return None


def quarantine(
    bad: dict[int, str],
    unreferenced: list[str],
    header: list[str],
    rows: list[dict[str, str]],
    settings: Settings,
) -> Path:
    """Move the bad files (those inside data_dir) to a fresh timestamped folder; log why."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = settings.quarantine_dir / stamp
    target.mkdir(parents=True, exist_ok=False)
    data_dir = settings.data_dir.resolve()
    log = []
    for i, reason in bad.items():
        rel = rows[i].get("path") or ""
        _move_inside(data_dir, rel, target)
        log.append({"image_id": rows[i].get("image_id") or "", "path": rel, "reason": reason})
    for name in unreferenced:
        rel = f"{IMAGES_SUBDIR}/{name}"
        _move_inside(data_dir, rel, target)
        log.append({"image_id": "", "path": rel, "reason": "not in the manifest"})
    # The removed manifest rows go with the files, so a quarantined image can be restored by hand.
    manifest.write_csv(target / "quarantined.csv", ("image_id", "path", "reason"), log)
    manifest.write_csv(target / manifest.MANIFEST_NAME, header, [rows[i] for i in bad])
    return target


def _move_inside(data_dir: Path, rel: str, target: Path) -> None:
    src = (data_dir / rel).resolve() if rel else None
    if src is not None and src.is_relative_to(data_dir) and src.is_file():
        dest = target / src.relative_to(data_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dest)


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
        return pd.DataFrame({"image_id": pd.Series(dtype=object), "tag": pd.Series(dtype=object)})
    tagged = df[["image_id", "tags"]].dropna()
    pairs = [
        (i, t)
        for i, cell in zip(tagged["image_id"], tagged["tags"], strict=True)
        for t in manifest.cell_to_tags(cell)
    ]
    return pd.DataFrame(pairs, columns=["image_id", "tag"])


def group_split_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Distinct (group, split) pairs: a group appearing twice here sits in two splits."""
    if "group" not in df or "split" not in df:
        return pd.DataFrame({"group": pd.Series(dtype=object), "split": pd.Series(dtype=object)})
    pairs = df[["group", "split"]].dropna().drop_duplicates()
    return pairs.sort_values(["group", "split"]).reset_index(drop=True)


def _suites(gx: Any, columns: list[str], spec: LabelSpec, settings: Settings) -> dict[str, list[Any]]:
    """Expectations per frame; meta["check"] is the sentence the report shows."""
    e = gx.expectations

    def check(text: str, warning_only: bool = False) -> dict[str, object]:
        return {"check": text, "warning_only": warning_only}

    required = ("image_id", "path", "split", "group", "width", "height", "phash")
    manifest_suite = [
        e.ExpectTableColumnsToMatchSet(
            column_set=columns, exact_match=True, meta=check("manifest has exactly the expected columns")
        ),
        e.ExpectTableRowCountToBeBetween(min_value=1, meta=check("manifest is not empty")),
        *[
            e.ExpectColumnValuesToNotBeNull(column=c, meta=check(f"{c} is present in every row"))
            for c in required
        ],
        e.ExpectColumnValuesToBeUnique(column="image_id", meta=check("image_id is unique")),
        e.ExpectColumnValuesToMatchRegex(
            column="image_id", regex=r"^[0-9a-f]{16}$", meta=check("image_id is a content hash")
        ),
        e.ExpectColumnValuesToBeInSet(
            column="split", value_set=list(SPLITS), meta=check("split is train, validation or test")
        ),
        e.ExpectColumnValuesToMatchRegex(
            column="path",
            regex=STORED_PATH,
            meta=check("path is images/<image_id>.<ext>"),
        ),
        e.ExpectColumnValuesToBeBetween(
            column="width",
            min_value=settings.min_image_side,
            meta=check("width is at least the minimum side"),
        ),
        e.ExpectColumnValuesToBeBetween(
            column="height",
            min_value=settings.min_image_side,
            meta=check("height is at least the minimum side"),
        ),
    ]
    if spec.score_range is not None:
        low, high = spec.score_range
        manifest_suite.append(
            e.ExpectColumnValuesToBeBetween(
                column="score",
                min_value=low,
                max_value=high,
                meta=check(f"score is within the declared range {low:g}..{high:g}"),
            )
        )
    else:
        manifest_suite.append(
            e.ExpectColumnValuesToBeNull(column="score", meta=check("no score where the spec declares none"))
        )
    tags = [
        e.ExpectColumnValuesToBeInSet(
            column="tag",
            value_set=sorted(spec.tag_counts),
            meta=check("every tag is in the label spec's vocabulary"),
        )
    ]
    group_splits = [
        e.ExpectColumnValuesToBeUnique(
            column="group",
            meta=check(
                "no group (given, or near duplicates) is in two splits (no leakage across splits)",
                warning_only=not settings.fail_on_split_leak,
            ),
        )
    ]
    return {"manifest": manifest_suite, "tags": tags, "group_splits": group_splits}


def run_expectations(df: pd.DataFrame, spec: LabelSpec, settings: Settings) -> list[CheckOutcome]:
    """Run the suites on the manifest and its derived frames in an ephemeral (in-memory) GX context."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"  # before the context exists: it reads this at creation
    import great_expectations as gx  # imported here: ~4 s, and only this stage needs it
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas(name="lightbox")
    frames = {"manifest": df, "tags": tag_frame(df), "group_splits": group_split_frame(df)}
    outcomes = []
    for name, expectations in _suites(gx, list(df.columns), spec, settings).items():
        batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(f"{name}-all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{name}-suite", expectations=expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}-validation", data=batch, suite=suite)
        )
        validation = definition.run(batch_parameters={"dataframe": frames[name]}, result_format="SUMMARY")
        outcomes += [_outcome(name, r, frames[name]) for r in validation.results]
    # GE returns results in its own order; sort failures first, then by check, for a stable report.
    return sorted(outcomes, key=lambda o: (o.success, o.check))


def tags_in_train(rows: list[dict[str, str]], spec: LabelSpec) -> CheckOutcome:
    """Every tag of the training vocabulary has an example in train (else its head learns nothing)."""
    in_train = {t for r in rows if r.get("split") == "train" for t in manifest.cell_to_tags(r.get("tags"))}
    missing = [t for t in spec.tags if t not in in_train]
    return CheckOutcome(
        check="every trained tag has examples in train",
        expectation="lightbox: tags of labels.json x split == train",
        success=not missing,
        observed=(
            f"{len(missing)} of {len(spec.tags)} tags have none: move some of their images to train, or "
            "import without a split column and lightbox assigns splits by group"
            if missing
            else "all present"
        ),
        unexpected=tuple(missing[:_EXAMPLES]),
    )


def golden_apart(rows: list[dict[str, str]], settings: Settings) -> CheckOutcome:
    """No golden photo is in data/: the gates judge on photos the model never saw. (Two imports at once
    had once left the golden slice in data/ with every other check passing; imports now take turns.)"""
    try:
        golden = {r["image_id"] for r in manifest.read_manifest(settings.golden_dir)}
    except ManifestError:
        golden = set()  # no golden set yet: `lightbox golden` (or the import) makes one
    shared = sorted(golden & {r.get("image_id", "") for r in rows})
    return CheckOutcome(
        check="no golden photo is in the dataset",
        expectation="lightbox: data/manifest.csv image_id x golden/manifest.csv image_id",
        success=not shared,
        observed=(
            f"{len(shared)} golden photos are also in data/ (they would be trained on and judged on): "
            "import the source again, which sets the golden slice apart"
            if shared
            else "apart"
        ),
        unexpected=tuple(shared[:_EXAMPLES]),
    )


def _outcome(frame: str, r: Any, df: pd.DataFrame) -> CheckOutcome:
    config = r.expectation_config
    column = config.kwargs.get("column")
    where = f"{frame}.{column}" if column else frame
    meta = config.meta or {}
    return CheckOutcome(
        check=meta.get("check", config.type),
        expectation=f"{config.type} ({where})",
        success=bool(r.success),
        observed=_observed(r),
        unexpected=tuple(_examples(r, df, column)),
        warning_only=bool(meta.get("warning_only", False)),
    )


def _examples(r: Any, df: pd.DataFrame, column: str | None) -> list[str]:
    """Unexpected values with the image they belong to (``value (image_id)``), so a reader can find them."""
    values = _unique_str((r.result or {}).get("partial_unexpected_list") or [])[:_EXAMPLES]
    if column is None or column == "image_id" or "image_id" not in df or column not in df:
        return values
    out = []
    for v in values:
        ids = df.loc[df[column].astype(str) == v, "image_id"].astype(str).head(2).tolist()
        out.append(f"{v} ({', '.join(ids)})" if ids else v)
    return out


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
        f"Quarantined at import: {len(result.import_problems)}",
    ]


def _check_rows(result: DataValidationResult) -> list[list[str]]:
    return [[c.check, _verdict(c), c.observed, ", ".join(c.unexpected), c.expectation] for c in result.checks]


def _verdict(c: CheckOutcome) -> str:
    if c.success:
        return "pass"
    return "WARN" if c.warning_only else "FAIL"


_IMPORT_HEADER = ["Image or row", "Reason"]
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
    if result.warnings:
        out += ["", "## Warnings", ""] + [f"- {w}" for w in result.warnings]
    out += ["", "## Expectations", ""]
    out += table(_CHECK_HEADER, _check_rows(result)) if result.checks else ["(not run)"]
    out += ["", "## Quarantine", ""]
    out += (
        table(_QUARANTINE_HEADER, [list(q) for q in result.quarantined]) if result.quarantined else ["None."]
    )
    out += ["", "## Quarantined at import", ""]
    out += (
        table(_IMPORT_HEADER, [list(q) for q in result.import_problems])
        if result.import_problems
        else ["None."]
    )
    return "\n".join(out) + "\n"


def render_html(result: DataValidationResult, manifest_path: Path) -> str:
    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join(
            f"<tr class='{'fail' if 'FAIL' in row else 'warn' if 'WARN' in row else ''}'>"
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
    imported = (
        table(_IMPORT_HEADER, [list(q) for q in result.import_problems])
        if result.import_problems
        else "<p>None.</p>"
    )
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings)
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "tr.fail{background:#fdd}tr.warn{background:#ffd}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Data validation</title>"
        f"<style>{style}</style></head><body><h1>Data validation report</h1><ul>{summary}</ul>"
        + (f"<h2>Failures</h2><ul>{failures}</ul>" if failures else "")
        + (f"<h2>Warnings</h2><ul>{warnings}</ul>" if warnings else "")
        + f"<h2>Expectations</h2>{checks}<h2>Quarantine</h2>{quarantined}"
        + f"<h2>Quarantined at import</h2>{imported}</body></html>\n"
    )
