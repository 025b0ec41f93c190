"""A photo edited in place (same path or key, new content) is scored again by a rerun: the listing's
source version (size and mtime, or size and ETag) is recorded with each row, a URI whose version changed
is pending again, and its new row supersedes the old content's. Rows without a version (written before
versions were recorded) and listings without one (a list of URIs) keep skipping by URI."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from lightbox.adapters.s3 import object_version
from lightbox.catalog import Listed, list_with_versions
from lightbox.results import (
    Done,
    ParquetSink,
    ScoreRow,
    Stamp,
    changed_since,
    done_from,
    needs_no_row,
    pending,
    read_parts,
    repeated_ok,
    still_done_ids,
    to_table,
)
from pipelines.score_catalog import OK, ScoreResult, rows_from_batch

T0, T1 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)


def _row(
    uri: str, image_id: str, version: str | None, error: str | None = None, name: str = "lightbox"
) -> ScoreRow:
    return ScoreRow(
        uri=uri,
        image_id=image_id,
        content_hash=image_id + "ff",
        model_name=name,
        model_version="3",
        score=None if error else 0.5,
        tag_probs=None if error else {"t": 0.25},
        error=error,
        source_version=version,
    )


def _rows(folder: Path, name: str = "lightbox") -> dict[str, list[tuple[str | None, str | None, str | None]]]:
    """uri -> (image_id, source_version, error) of its rows for ``name`` v3."""
    table = read_parts(folder)
    out: dict[str, list[tuple[str | None, str | None, str | None]]] = {}
    for r in [] if table is None else table.to_pylist():
        if r["model_name"] == name:
            out.setdefault(r["uri"], []).append((r["image_id"], r["source_version"], r["error"]))
    return out


# --- listing ---------------------------------------------------------------------------------------------


def test_a_folder_lists_each_image_with_its_size_and_mtime_and_a_list_without(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"xx")
    os.utime(tmp_path / "a.jpg", ns=(1, 1_700_000_000_123_456_789))
    assert list(list_with_versions(str(tmp_path))) == [
        Listed(str(tmp_path / "a.jpg"), "2:1700000000123456789")
    ]
    (tmp_path / "a.jpg").write_bytes(b"xyz")  # re-exported over the old file
    assert list(list_with_versions(str(tmp_path)))[0].version != "2:1700000000123456789"
    listing = tmp_path / "list.txt"
    listing.write_text("a.jpg\n")
    assert list(list_with_versions(str(listing))) == [Listed(str(tmp_path / "a.jpg"), None)]


def test_an_s3_object_version_is_its_size_and_etag() -> None:
    assert object_version({"Key": "a.jpg", "Size": 12, "ETag": '"9e107d9d"'}) == "12:9e107d9d"
    when = datetime(2026, 1, 1, tzinfo=UTC)
    assert object_version({"Key": "a.jpg", "Size": 12, "LastModified": when}) == f"12:{when.isoformat()}"


# --- the pure decisions ----------------------------------------------------------------------------------


def test_a_uri_whose_source_changed_is_pending_and_its_old_content_is_not_done() -> None:
    done = done_from(
        [
            ("x", "/a", False, "10:1"),
            ("y", "/b", False, "20:1"),
            ("z", "/old", False, None),  # written before versions were recorded: current
            ("w", "/bad", True, "5:1"),  # failed: retried whatever its version
        ]
    )
    assert done.stamps == {"/a": Stamp("10:1", "x"), "/b": Stamp("20:1", "y")}
    listed = {"/a": "10:1", "/b": "21:2", "/old": "7:7", "/bad": "6:6", "/new": "1:1"}
    changed = changed_since(done, listed)
    assert changed == {"/b"}
    assert changed_since(done, {}) == set()  # a list of URIs: no versions, skipped by URI as before
    assert pending(["/a", "/b", "/old", "/bad", "/new", "/b"], done, changed) == (
        ["/b", "/bad", "/new"],
        3,
        1,
    )
    # /b's old content may be a copy under another URI: read there, it must be scored, not skipped.
    assert still_done_ids(done, changed) == {"x", "z"}
    assert still_done_ids(done, frozenset()) is done.image_ids


def test_a_changed_uri_that_needs_no_row_of_its_own_loses_its_old_row() -> None:
    dropped = [_row("/c", "x", "2"), _row("/d", "y", "2", error="truncated")]
    # /b read as SKIP (now a copy of a photo scored under another URI), /c and /d copies of images this
    # job wrote: each one's old row is stale, none gets a new one.
    assert needs_no_row(frozenset(), ["/b", "/seen"], dropped, frozenset({"/b", "/c", "/d"})) == {
        "/b",
        "/c",
        "/d",
    }


def test_several_ok_rows_of_one_uri_are_repeated() -> None:
    rows = [
        ("x", "/a", False, "1"),
        ("y", "/a", False, "2"),
        ("z", "/b", False, "1"),
        (None, "/b", True, None),
    ]
    assert repeated_ok(rows) == {"/a"}


def test_the_summary_says_how_many_changed_since_scored() -> None:
    result = ScoreResult("src", "out", "m", "1", listed=5, scored=2, skipped=3, changed=2)
    assert "2 scored, 3 skipped, 0 failed of 5, 2 changed since scored in" in result.summary()
    assert "changed" not in ScoreResult("src", "out", "m", "1", listed=1, scored=1).summary()


def test_a_scored_batch_carries_each_uri_s_listed_version() -> None:
    batch = {
        "uri": np.array(["/a", "/b"], object),
        "status": np.array([OK, OK], object),
        "image_id": np.array(["x", "y"], object),
        "content_hash": np.array(["xff", "yff"], object),
        "error": np.array(["", ""], object),
        "source_version": np.array(["3:9", ""], object),
        "score": np.array([0.5, 0.25], np.float32),
        "tag_probs": np.array(['{"t": 0.5}', '{"t": 0.25}'], object),
        "model_name": np.array(["m", "m"], object),
        "model_version": np.array(["1", "1"], object),
        "has_score": np.array([True, True]),
    }
    rows, _ = rows_from_batch(batch)
    assert [r.source_version for r in rows] == ["3:9", None]


# --- a results folder ------------------------------------------------------------------------------------


def test_a_changed_uri_s_new_row_supersedes_its_old_one(tmp_path: Path) -> None:
    out = tmp_path / "scores"
    ParquetSink(out).write(
        [
            _row("/a", "x", "1"),
            _row("/b", "y", "1"),
            _row("/c", "z", "1"),
            _row("/d", "v", "1"),
            _row("/b", "y", "1", name="pets"),  # another model's: never touched
        ]
    )
    sink = ParquetSink(out)
    done = sink.done("lightbox", "3")
    changed = changed_since(done, {"/a": "1", "/b": "2", "/c": "2", "/d": "2"})
    assert changed == {"/b", "/c", "/d"}
    # /b re-exported, /c now truncated, /d now a copy of /a (read as SKIP: no row of its own).
    sink.write([_row("/b", "y2", "2"), _row("/c", "z2", "2", error="truncated")])
    assert len(_rows(out)["/b"]) == 2  # until finish: the new part is on disk before the old one changes
    sink.finish(needs_no_row(done.failed, ["/d"], [], changed))
    assert _rows(out) == {
        "/a": [("x", "1", None)],
        "/b": [("y2", "2", None)],
        "/c": [("z2", "2", "truncated")],
    }
    assert _rows(out, "pets") == {"/b": [("y", "1", None)]}
    assert not list(out.glob("*.tmp"))
    again = ParquetSink(out).done("lightbox", "3")
    assert again.stamps["/b"] == Stamp("2", "y2") and changed_since(again, {"/a": "1", "/b": "2"}) == set()


def test_a_job_killed_before_dropping_a_changed_uri_s_old_row_is_repaired_by_the_next(tmp_path: Path) -> None:
    out = tmp_path / "scores"
    out.mkdir()
    pq.write_table(
        to_table([_row("/a", "x", "1"), _row("/b", "y", "1")], T0), out / "part-old-000000.parquet"
    )
    pq.write_table(to_table([_row("/b", "y2", "2")], T1), out / "part-new-000000.parquet")

    done = ParquetSink(out).done("lightbox", "3")
    assert done == Done(
        frozenset({"/a", "/b"}),
        frozenset({"x", "y2"}),
        stamps={"/a": Stamp("1", "x"), "/b": Stamp("2", "y2")},
    )
    assert _rows(out) == {"/a": [("x", "1", None)], "/b": [("y2", "2", None)]}  # the newer row stays


def test_rows_written_before_versions_were_recorded_are_current(tmp_path: Path) -> None:
    out = tmp_path / "scores"
    out.mkdir()
    old = to_table([replace(_row("/a", "x", None), source_version=None)], T0).drop_columns(["source_version"])
    pq.write_table(old, out / "part-old-000000.parquet")  # a part as earlier versions wrote it
    done = ParquetSink(out).done("lightbox", "3")
    assert done == Done(frozenset({"/a"}), frozenset({"x"}))
    changed = changed_since(done, {"/a": "5:123"})
    assert pending(["/a"], done, changed) == ([], 1, 0)
