"""A rerun of bulk scoring retries the images whose row is an error and skips the ones scored OK; the
retry's row supersedes the error row, so a results folder keeps one row per image, and a job killed
between writing the retry's part and rewriting the error row's part is repaired by the next one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lightbox.results import (
    Done,
    ParquetSink,
    RowAt,
    ScoreRow,
    done_from,
    needs_no_row,
    pending,
    read_parts,
    stale_errors,
    to_table,
)
from pipelines.score_catalog import ScoreResult

T0, T1 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)


def _row(uri: str, image_id: str | None, error: str | None = None, name: str = "lightbox") -> ScoreRow:
    return ScoreRow(
        uri=uri,
        image_id=image_id,
        content_hash=None if image_id is None else image_id + "ff",
        model_name=name,
        model_version="3",
        score=None if error else 0.5,
        tag_probs=None if error else {"t": 0.25},
        error=error,
    )


def _rows(folder: Path, name: str = "lightbox") -> dict[str, list[str | None]]:
    """uri -> the errors of its rows (None: an OK row) for ``name`` v3."""
    table = read_parts(folder)
    out: dict[str, list[str | None]] = {}
    for r in [] if table is None else table.to_pylist():
        if r["model_name"] == name:
            out.setdefault(r["uri"], []).append(r["error"])
    return out


# --- the pure decisions ----------------------------------------------------------------------------------


def test_failed_uris_are_pending_again_and_counted_as_retried() -> None:
    done = done_from(
        [("x", "/a", False, None), (None, "/gone", True, None), ("y", "/bad", True, None)]
        + [("z", "/fixed", True, None), ("w", "/fixed", False, None)]  # OK beside error (a kill): OK wins
    )
    assert done == Done(frozenset({"/a", "/fixed"}), frozenset({"x", "w"}), frozenset({"/gone", "/bad"}))
    todo, skipped, retried = pending(["/a", "/gone", "/bad", "/new", "/gone", "/fixed"], done)
    assert todo == ["/gone", "/bad", "/new"]
    assert (skipped, retried) == (3, 2)


def test_an_error_row_goes_when_an_ok_row_or_a_newer_row_of_its_uri_supersedes_it() -> None:
    old_a = RowAt("part-old.parquet", "/a", T0)
    old_b, new_b = RowAt("part-old.parquet", "/b", T0), RowAt("part-new.parquet", "/b", T1)
    old_c = RowAt("part-old.parquet", "/c", T0)
    errors = [old_a, old_b, new_b, old_c]
    # The next run after a kill: /a has an OK row; /b two error rows, of which the newer stays.
    assert stale_errors(errors, {"/a"}) == {old_a, old_b}
    # The end of a job that retried /c (its new row is in this job's part, not among ``errors``).
    assert stale_errors([old_c], {"/c"}) == {old_c}
    assert stale_errors([old_c], set()) == set()


def test_a_retried_uri_whose_content_is_scored_already_needs_no_row() -> None:
    failed = frozenset({"/gone", "/copy", "/bad_copy"})
    dropped = [_row("/copy", "x"), _row("/bad_copy", "y", error="truncated"), _row("/other", "x")]
    # /gone read as SKIP; /copy is a copy of an image this job scored; /bad_copy a copy of one that
    # failed again, which keeps its own error row.
    assert needs_no_row(failed, ["/gone", "/seen"], dropped) == {"/gone", "/copy"}


def test_the_summary_says_how_many_failed_rows_were_retried() -> None:
    result = ScoreResult("src", "out", "m", "1", listed=21, scored=2, skipped=17, failed=2, retried=4)
    assert "2 scored, 17 skipped, 2 failed of 21, 4 retried (failed before) in" in result.summary()
    assert "retried" not in ScoreResult("src", "out", "m", "1", listed=1, scored=1).summary()


# --- a results folder ------------------------------------------------------------------------------------


def test_a_rerun_retries_failed_images_and_keeps_one_row_each(tmp_path: Path) -> None:
    out = tmp_path / "scores"
    ParquetSink(out).write(
        [
            _row("/a", "x"),
            _row("/gone", None, error="not found"),
            _row("/bad", "y", error="truncated"),
            _row("/gone", None, error="not found", name="pets"),  # another model's: never touched
        ]
    )
    sink = ParquetSink(out)
    done = sink.done("lightbox", "3")
    assert done == Done(frozenset({"/a"}), frozenset({"x"}), frozenset({"/gone", "/bad"}))
    assert pending(["/a", "/gone", "/bad"], done) == (["/gone", "/bad"], 1, 2)
    sink.write([_row("/gone", "g"), _row("/bad", "y2", error="still truncated")])
    assert _rows(out)["/gone"] == ["not found", None] or _rows(out)["/gone"] == [None, "not found"]
    sink.finish(set())
    assert _rows(out) == {"/a": [None], "/gone": [None], "/bad": ["still truncated"]}
    assert _rows(out, "pets") == {"/gone": ["not found"]}
    assert not list(out.glob("*.tmp"))
    assert ParquetSink(out).done("lightbox", "3") == Done(
        frozenset({"/a", "/gone"}), frozenset({"x", "g"}), frozenset({"/bad"})
    )


def test_a_job_killed_before_rewriting_the_old_part_is_repaired_by_the_next(tmp_path: Path) -> None:
    """The folder a job leaves when killed between its two steps: the retry's OK row in its new part,
    the error row it supersedes still in the old part."""
    out = tmp_path / "scores"
    out.mkdir()
    pq.write_table(
        to_table(
            [_row("/a", "x"), _row("/gone", None, error="not found"), _row("/b", None, "not found")], T0
        ),
        out / "part-old-000000.parquet",
    )
    pq.write_table(to_table([_row("/gone", "g")], T1), out / "part-new-000000.parquet")
    pq.write_table(to_table([_row("/b", None, "not found again")], T1), out / "part-new-000001.parquet")

    sink = ParquetSink(out)
    done = sink.done("lightbox", "3")
    sink.close()
    assert done == Done(frozenset({"/a", "/gone"}), frozenset({"x", "g"}), frozenset({"/b"}))
    assert _rows(out) == {"/a": [None], "/gone": [None], "/b": ["not found again"]}  # every OK row kept
    assert sorted(p.name for p in out.iterdir()) == [
        "part-new-000000.parquet",
        "part-new-000001.parquet",
        "part-old-000000.parquet",
    ]


def test_a_retried_image_scored_under_another_uri_loses_its_error_row(tmp_path: Path) -> None:
    out = tmp_path / "scores"
    ParquetSink(out).write([_row("/a", "x"), _row("/copy", None, error="not found")])
    sink = ParquetSink(out)
    assert sink.done("lightbox", "3").failed == {"/copy"}
    sink.finish(set())  # a job stopped before it read /copy: its error row stays
    assert _rows(out) == {"/a": [None], "/copy": ["not found"]}
    sink.finish({"/copy"})  # restored as a copy of /a: read as SKIP, no row of its own
    assert _rows(out) == {"/a": [None]}


def test_a_part_left_with_no_rows_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "scores"
    ParquetSink(out).write([_row("/gone", None, error="not found")])
    sink = ParquetSink(out)
    sink.done("lightbox", "3")
    sink.write([_row("/gone", "g")])
    sink.finish(set())
    assert len(list(out.glob("part-*.parquet"))) == 1 and _rows(out) == {"/gone": [None]}


def test_a_version_the_gates_never_judged_is_refused_before_ray_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every model actor refused it, in a Ray traceback each; now one line before the job starts."""
    from types import SimpleNamespace

    from lightbox.adapters import mlflow_registry
    from lightbox.settings import Settings
    from pipelines import score_catalog

    monkeypatch.setattr(mlflow_registry, "require_version", lambda s, v: SimpleNamespace(tags={}))
    monkeypatch.setattr(score_catalog, "_score", _must_not_run)
    with pytest.raises(
        mlflow_registry.ArtifactUnverified, match=r"v3 has no recorded .*lightbox gates --version 3"
    ):
        score_catalog.run(Settings(project_dir=tmp_path), str(tmp_path), str(tmp_path / "out"), version="3")


def _must_not_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("the job started")
