"""The lightbox_data DAG's first task: import the user's SOURCE, or render the synthetic demo set
when no source is given. One function, so the DAG file only passes its params through."""

from __future__ import annotations

from collections.abc import Mapping

from lightbox.settings import Settings
from pipelines import data, importer

# DAG params that are import options (same names as the CLI flags, with underscores).
OPTION_PARAMS: tuple[str, ...] = (
    "format",
    "score_column",
    "tags_column",
    "split_column",
    "group_column",
    "score_range",
    "local_files_root",
    "media_root",
    "append",
    "golden",
)


def run(settings: Settings, params: Mapping[str, object]) -> importer.ImportResult:
    """Import ``params["source"]`` with the import options among ``params``; without a source, render the
    demo set, which pipelines.data refuses where data/ holds the user's photos (a source left empty in
    the trigger form must not replace them). Import options without a source are refused: they can only
    mean a source was forgotten."""
    source = params.get("source")
    if not source:
        given = [k for k in OPTION_PARAMS if params.get(k) not in (None, "", False)]
        if given:
            raise importer.ImportFailed(
                f"{', '.join(given)} given without a source: set `source` to your photos' folder, export "
                "file or s3://bucket/prefix (without one lightbox_data renders the synthetic demo set)"
            )
        return data.run(
            settings,
            n_sources=_int_or_none(params.get("n_sources")),
            variants=_int_or_none(params.get("variants")),
        )
    options = {k: params[k] for k in OPTION_PARAMS if params.get(k) not in (None, "")}
    options["append"] = bool(options.get("append", False))
    return importer.run(settings, str(source), importer.ImportOptions(**options))  # type: ignore[arg-type]


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]
