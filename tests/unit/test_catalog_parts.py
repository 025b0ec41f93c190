"""Bulk scoring's pure parts, without Ray or a model: listing a source, reading one image, retries,
what a resumed job skips, one row per image, and atomic parquet parts."""

from __future__ import annotations

import errno
import hashlib
import io
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lightbox.catalog import (
    CatalogError,
    ImageUnreadable,
    StorageUnavailable,
    list_with_versions,
    read_uri,
    with_retries,
)
from lightbox.feature_schema import EMBEDDING_DIM
from lightbox.photos import content_id
from lightbox.results import (
    BadDestination,
    Deduper,
    Done,
    ParquetSink,
    ScoreRow,
    done_from,
    open_sink,
    pending,
    read_parts,
)
from lightbox.settings import Settings
from lightbox.source_tree import SourceNotFound, SourceTree
from pipelines.score_catalog import (
    ERROR,
    NODE_CPUS,
    OK,
    SKIP,
    UNAVAILABLE,
    DecodeThen,
    ScoreResult,
    StreamClock,
    actor_calls,
    actor_threads,
    check_reservations,
    choose_layout,
    embeddings_of,
    read_one,
    rows_from_batch,
    score_batch,
    score_frame,
    without_unavailable,
)
from serving.runtime import MAX_CPU_BATCH_STREAMS


def listed_uris(source: str, left_out: Counter[str] | None = None) -> list[str]:
    """The URIs a source lists, in order (their source versions aside)."""
    return [listed.uri for listed in list_with_versions(source, left_out=left_out)]


def _png(size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


# --- listing -------------------------------------------------------------------------------------------


def test_a_folder_lists_its_images_sorted_and_skips_sidecars(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    names = ("b/z.JPG", "a.png", "b/c.webp", "notes.json", ".hidden.jpg", "b/raw.xmp", "b/p.HEIC", "q.avif")
    for name in (*names, "b/IMG_1.CR2", "b/IMG_2.CR2", "README"):
        (tmp_path / name).write_bytes(b"x")
    left_out: Counter[str] = Counter()
    assert listed_uris(str(tmp_path), left_out=left_out) == [
        str(tmp_path / "a.png"),
        str(tmp_path / "b/c.webp"),
        str(tmp_path / "b/p.HEIC"),  # a phone's photos
        str(tmp_path / "b/z.JPG"),
        str(tmp_path / "q.avif"),
    ]
    assert left_out == {".cr2": 2, ".json": 1, ".xmp": 1, "no extension": 1}  # said, not silently dropped
    result = ScoreResult("src", "out", "m", "1", listed=5, scored=5, left_out=dict(left_out))
    assert result.summary().endswith(
        "; not listed, not images by name: 5 files (.cr2 2, .json 1, .xmp 1, no extension 1)"
    )


def test_a_folder_follows_its_symlinked_folders_once_and_never_loops(tmp_path: Path) -> None:
    photos, lib = tmp_path / "photos", tmp_path / "lib"
    (photos / "sub").mkdir(parents=True)
    (lib / "real").mkdir(parents=True)
    for name in ("photos/a.jpg", "photos/sub/b.jpg", "lib/real/x.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (lib / "2024").symlink_to(photos)  # a year linked in from another disk
    (lib / "again").symlink_to(photos)  # the same folder twice: listed once
    (lib / "loop").symlink_to(lib)  # back up the tree
    (lib / "real" / "up").symlink_to("..")
    (lib / "z").symlink_to(lib / "real")  # a folder the walk reaches anyway: by its own name
    assert listed_uris(str(lib)) == [
        str(lib / "2024/a.jpg"),
        str(lib / "2024/sub/b.jpg"),
        str(lib / "real/x.jpg"),
    ]
    assert SourceTree(str(lib)).files_below(limit=2) == []  # a folder source: files() is all of them
    assert SourceTree(str(lib), single_file="t.csv").files_below(limit=2) == ["real/x.jpg", "2024/a.jpg"]


def test_a_text_list_keeps_its_order_and_resolves_relative_paths(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("# catalog\nb.jpg\n\n/abs/a.jpg\nfile:///x/y%20z.png\ns3://bucket/k.jpg\nsub/c.txt\n")
    assert listed_uris(str(listing)) == [
        str(tmp_path / "b.jpg"),
        "/abs/a.jpg",
        "/x/y z.png",
        "s3://bucket/k.jpg",
        str(tmp_path / "sub/c.txt"),  # a list names images explicitly: no extension filter
    ]


def test_a_list_saved_on_windows_reads_the_same_and_a_binary_one_is_refused(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbf/abs/a.jpg\r\n# note\r\n\r\nb.jpg\r\n")  # BOM and CRLF
    assert listed_uris(str(listing)) == ["/abs/a.jpg", str(tmp_path / "b.jpg")]
    listing.write_bytes(b"PAR1\x00\xff\xfe")  # a parquet file without its extension
    with pytest.raises(CatalogError, match="not UTF-8 text.*parquet"):
        listed_uris(str(listing))
    (tmp_path / "IMG_1.HEIC").write_bytes(b"x")
    with pytest.raises(CatalogError, match="is one image: give its folder"):
        listed_uris(str(tmp_path / "IMG_1.HEIC"))


def test_a_parquet_list_reads_its_uri_column(tmp_path: Path) -> None:
    path = tmp_path / "cat.parquet"
    uris = ["/a.jpg", None, "rel.png", " /b.jpg", "#1 shoot.jpg", ""]
    pq.write_table(pa.table({"uri": uris, "other": [1, 2, 3, 4, 5, 6]}), path)
    # Values are data: stripped, but "#" starts no comment as it does in a text list.
    assert listed_uris(str(path)) == [
        "/a.jpg",
        str(tmp_path / "rel.png"),
        "/b.jpg",
        str(tmp_path / "#1 shoot.jpg"),
    ]
    pq.write_table(pa.table({"path": ["/a.jpg"]}), path)
    with pytest.raises(CatalogError, match="no `uri` column"):
        listed_uris(str(path))


def test_a_list_that_is_not_one_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bogus = tmp_path / "bogus.parquet"
    bogus.write_text("/abs/a.jpg\n")  # a text list under a parquet name
    with pytest.raises(CatalogError, match=r"bogus.parquet is not a parquet file .*the .txt extension"):
        listed_uris(str(bogus))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(CatalogError, match="empty.txt is an empty list: it names no URIs"):
        listed_uris(str(empty))
    pq.write_table(pa.table({"uri": pa.array([], pa.string())}), tmp_path / "none.parquet")
    with pytest.raises(CatalogError, match="an empty list: it names no `uri` values"):
        listed_uris(str(tmp_path / "none.parquet"))

    from lightbox.adapters import s3

    def absent(url: str, endpoint_url: str | None) -> bytes:
        raise s3.ObjectNotFound(f"no object at {url}")

    monkeypatch.setattr(s3, "read", absent)
    with pytest.raises(SourceNotFound, match="no object at s3://bucket/nolist.txt"):
        listed_uris("s3://bucket/nolist.txt")


def test_a_missing_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound):
        listed_uris(str(tmp_path / "nowhere"))


def test_read_uri_says_not_found_for_a_folder_or_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_uri(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        read_uri(str(tmp_path / "gone.jpg"))


# --- retries -------------------------------------------------------------------------------------------


def test_transient_errors_are_retried_with_backoff() -> None:
    calls, sleeps = [], []

    def flaky() -> bytes:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("peer reset")
        return b"ok"

    assert with_retries(flaky, attempts=4, first_delay_s=0.1, sleep=sleeps.append) == b"ok"
    assert sleeps == [0.1, 0.2]


def test_spent_retries_stop_the_job_and_a_missing_file_is_final_at_once() -> None:
    def down() -> bytes:
        raise TimeoutError("storage down")

    with pytest.raises(StorageUnavailable, match="after 3 attempts"):
        with_retries(down, attempts=3, sleep=lambda _: None)

    calls = []

    def missing() -> bytes:
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        with_retries(missing, attempts=3, sleep=lambda _: None)
    assert len(calls) == 1


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(errno.EACCES, "Permission denied"),
        OSError(errno.ELOOP, "Too many levels of symbolic links"),
        OSError(errno.ENAMETOOLONG, "File name too long"),
        OSError(errno.EPERM, "Operation not permitted"),
    ],
)
def test_an_error_about_the_file_itself_is_final_at_once(error: OSError) -> None:
    calls = []

    def read() -> bytes:
        calls.append(1)
        raise error

    with pytest.raises(ImageUnreadable, match=error.strerror or ""):
        with_retries(read, attempts=4, sleep=lambda _: None)
    assert len(calls) == 1  # not retried, and not StorageUnavailable: the image's row says it


def test_s3_throttling_and_denial_stop_the_job_and_an_archived_object_is_final() -> None:
    from botocore.exceptions import ClientError

    def client_error(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": code}}, "GetObject")

    for code in ("SlowDown", "InternalError", "503", "RequestTimeTooSkewed", "AccessDenied"):
        calls: list[int] = []

        def throttled(code: str = code, calls: list[int] = calls) -> bytes:
            calls.append(1)
            raise client_error(code)

        with pytest.raises(StorageUnavailable):
            with_retries(throttled, attempts=3, sleep=lambda _: None)
        assert len(calls) == 3, code

    def archived() -> bytes:  # in Glacier: this object, not the bucket
        raise client_error("InvalidObjectState")

    with pytest.raises(ImageUnreadable):
        with_retries(archived, sleep=lambda _: None)


def test_a_symlink_loop_is_the_images_error_row_and_storage_trouble_stops_the_job(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    loop = read_one(str(tmp_path / "a.jpg"), read_uri, max_pixels=10_000)
    assert (loop.status, loop.image_id) == (ERROR, "")
    assert loop.error.startswith("unreadable:") and "symbolic links" in loop.error

    # /proc/self/mem reads as EIO: storage trouble, returned as a read (Ray would hide a raise) ...
    eio = read_one("/proc/self/mem", read_uri, max_pixels=10_000, attempts=1)
    assert eio.status == UNAVAILABLE and "Input/output error" in eio.error
    # ... which the driver stops the job on, keeping the batch's other rows.
    batch = {
        "uri": np.array(["/ok.jpg", "/proc/self/mem"], object),
        "status": np.array([OK, UNAVAILABLE], object),
        "error": np.array(["", eio.error], object),
    }
    kept, stop = without_unavailable(batch)
    assert list(kept["uri"]) == ["/ok.jpg"] and list(kept["status"]) == [OK]
    assert isinstance(stop, StorageUnavailable) and "/proc/self/mem" in str(stop)
    assert without_unavailable(kept) == (kept, None)


# --- reading one image -----------------------------------------------------------------------------------


def test_read_one_gives_pixels_ids_or_the_reason() -> None:
    png = _png()
    store = {"ok.png": png, "garbage.jpg": b"no image", "huge.png": _png((300, 300))}

    def fetch(uri: str) -> bytes:
        if uri not in store:
            raise FileNotFoundError(uri)
        return store[uri]

    ok = read_one("ok.png", fetch, max_pixels=10_000)
    assert ok.status == OK and ok.pixels is not None and ok.pixels.shape == (3, 224, 224)
    assert ok.image_id == content_id(png) and ok.content_hash == hashlib.sha256(png).hexdigest()
    assert read_one("garbage.jpg", fetch, max_pixels=10_000).status == ERROR
    huge = read_one("huge.png", fetch, max_pixels=10_000)
    assert huge.status == ERROR and "over the limit" in huge.error and huge.image_id
    gone = read_one("gone.png", fetch, max_pixels=10_000)
    assert (gone.status, gone.image_id) == (ERROR, "") and "not found" in gone.error
    again = read_one("ok.png", fetch, max_pixels=10_000, done_ids=frozenset({content_id(png)}))
    assert again.status == SKIP and again.pixels is None


# --- scoring a batch (a fake predictor) -----------------------------------------------------------------


class _Predictor:
    name, version, tag_names, has_score = "m", "7", ("a", "b"), True

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(len(x))
        mean = x.reshape(len(x), -1).mean(axis=1).astype(np.float32)
        return mean, np.stack([mean / 255, 1 - mean / 255], axis=1).astype(np.float32)


def test_score_batch_scores_only_what_was_read_in_model_batches() -> None:
    n = 5
    pixels = np.zeros((n, 3, 224, 224), np.uint8)
    pixels[0], pixels[2], pixels[3] = 10, 20, 30
    batch = {
        "uri": np.array([f"u{i}" for i in range(n)], object),
        "status": np.array([OK, ERROR, OK, OK, SKIP], object),
        "image_id": np.array(["i0", "i1", "i2", "i3", "i4"], object),
        "content_hash": np.array(["h0", "h1", "h2", "h3", "h4"], object),
        "error": np.array(["", "corrupt", "", "", ""], object),
        "pixels": pixels,
    }
    predictor = _Predictor()
    scored = score_batch(batch, predictor, batch_size=2)  # type: ignore[arg-type]
    assert predictor.batches == [2, 1] and "pixels" not in scored
    rows, skipped = rows_from_batch(scored)
    assert skipped == ["u4"] and [r.uri for r in rows] == ["u0", "u1", "u2", "u3"]
    assert [r.score for r in rows] == [10.0, None, 20.0, 30.0]
    assert rows[1].error == "corrupt" and rows[1].tag_probs is None
    assert rows[2].tag_probs == pytest.approx({"a": 20 / 255, "b": 1 - 20 / 255})
    assert {(r.model_name, r.model_version) for r in rows} == {("m", "7")}


def test_cpu_model_actors_share_their_node_cores_not_one_thread_each() -> None:
    assert actor_threads([2.0], 1) == 2  # one actor on a 2-core node: both cores, not Ray's one
    assert actor_threads([16.0], 2) == 8
    assert actor_threads([16.0, 16.0], 2) == 16  # SPREAD: one actor per node
    assert actor_threads([8.0, 16.0], 4) == 4  # the smallest node, two actors on it
    assert actor_threads([2.0], 3) == 1 and actor_threads([], 1) == 1  # never below one


def test_embeddings_go_with_the_scored_rows_only_into_the_online_frame() -> None:
    n = 4
    pixels = np.zeros((n, 3, 224, 224), np.uint8)
    pixels[0], pixels[3] = 10, 30
    batch = {
        "uri": np.array([f"u{i}" for i in range(n)], object),
        "status": np.array([OK, ERROR, SKIP, OK], object),
        "image_id": np.array(["i0", "i1", "i2", "i3"], object),
        "content_hash": np.array(["h0", "h1", "h2", "h3"], object),
        "error": np.array(["", "corrupt", "", ""], object),
        "pixels": pixels,
    }

    def embed(x: np.ndarray) -> np.ndarray:  # the first pixel's value, EMBEDDING_DIM times
        return np.repeat(x[:, :1, 0, 0].astype(np.float32), EMBEDDING_DIM, axis=1)

    scored = score_batch(batch, _Predictor(), batch_size=1, embed=embed)  # type: ignore[arg-type]
    assert scored["embedding"].shape == (n, EMBEDDING_DIM)
    embeddings = embeddings_of(scored)
    assert sorted(embeddings) == ["i0", "i3"] and embeddings["i3"][0] == 30.0
    rows, _ = rows_from_batch(scored)
    when = datetime(2026, 1, 2, tzinfo=UTC)
    frame = score_frame(rows, embeddings, when)
    assert frame["image_id"].tolist() == ["i0", "i3"]  # the failed row is not published
    assert frame["model_version"].tolist() == ["7", "7"] and frame["model_name"].tolist() == ["m", "m"]
    assert frame["score"].tolist() == [10.0, 30.0] and frame["score"].dtype == np.float32
    assert frame["tag_probs"][1] == pytest.approx({"a": 30 / 255, "b": 1 - 30 / 255})
    assert frame["embedding"][0].dtype == np.float32 and frame["embedding"][0][5] == 10.0
    assert (frame["event_timestamp"] == when).all()
    assert embeddings_of(score_batch(batch, _Predictor(), batch_size=2)) == {}  # type: ignore[arg-type]


# --- resumption and one row per image --------------------------------------------------------------------


def _row(
    uri: str, image_id: str | None, version: str = "3", error: str | None = None, name: str = "lightbox"
) -> ScoreRow:
    return ScoreRow(
        uri=uri,
        image_id=image_id,
        content_hash=None if image_id is None else image_id + "ff",
        model_name=name,
        model_version=version,
        score=None if error else 0.5,
        tag_probs=None if error else {"t": 0.25},
        error=error,
    )


def test_pending_skips_done_and_repeated_uris() -> None:
    done = done_from([("id1", "/a.jpg", False, None), (None, "/missing.jpg", True, None)])
    assert done == Done(frozenset({"/a.jpg"}), frozenset({"id1"}), frozenset({"/missing.jpg"}))
    todo, skipped, retried = pending(["/a.jpg", "/b.jpg", "/missing.jpg", "/b.jpg", "/c.jpg"], done)
    assert (todo, skipped, retried) == (["/b.jpg", "/missing.jpg", "/c.jpg"], 2, 1)


def test_deduper_keeps_the_first_row_of_each_image() -> None:
    d = Deduper()
    first, dropped = d.new([_row("/a", "x"), _row("/copy_of_a", "x"), _row("/gone", None)])
    assert [r.uri for r in first] == ["/a", "/gone"] and [r.uri for r in dropped] == ["/copy_of_a"]
    second, dropped = d.new([_row("/gone", None), _row("/b", "y")])
    assert [r.uri for r in second] == ["/b"] and [r.uri for r in dropped] == ["/gone"]


def test_parquet_parts_are_atomic_and_tell_what_each_version_has(tmp_path: Path) -> None:
    out = tmp_path / "scores"
    out.mkdir()
    (out / "part-dead-000000.parquet.tmp").write_bytes(b"half a part")  # a killed job's leftover
    (out / "report.docx.tmp").write_bytes(b"the user's draft")  # theirs: kept
    sink = ParquetSink(out)
    assert [p.name for p in out.glob("*.tmp")] == ["report.docx.tmp"]
    assert sink.done("lightbox", "3") == Done()
    sink.write([_row("/a", "x"), _row("/bad", "y", error="corrupt")])
    sink.write([_row("/gone", None, error="not found"), _row("/a", "x", version="4")])
    sink.write([])
    assert len(list(out.glob("part-*.parquet"))) == 2
    assert sink.done("lightbox", "3") == Done(
        frozenset({"/a"}), frozenset({"x"}), frozenset({"/bad", "/gone"})
    )
    assert sink.done("lightbox", "4") == Done(frozenset({"/a"}), frozenset({"x"}))
    table = read_parts(out)
    assert table is not None and table.num_rows == 4
    row = table.to_pylist()[0]
    assert row["tag_probs"] == [("t", 0.25)] and row["scored_at"] is not None
    # A second sink (the resumed job) writes beside the first one's parts, never over them.
    ParquetSink(out).write([_row("/c", "z")])
    assert read_parts(out).num_rows == 5  # type: ignore[union-attr]


def test_two_models_with_the_same_version_number_each_have_their_own_done(tmp_path: Path) -> None:
    """pets v1 and places v1 (served together): what one has scored is not done for the other."""
    out = tmp_path / "scores"
    ParquetSink(out).write(
        [_row("/a", "x", "1", name="pets"), _row("/bad", "y", "1", "corrupt", name="pets")]
    )
    sink = ParquetSink(out)
    assert sink.done("places", "1") == Done()
    assert pending(["/a", "/bad", "/b"], sink.done("places", "1")) == (["/a", "/bad", "/b"], 0, 0)
    sink.write([_row("/a", "x", "1", name="places")])
    assert sink.done("pets", "1") == Done(frozenset({"/a"}), frozenset({"x"}), frozenset({"/bad"}))
    assert sink.done("places", "1") == Done(frozenset({"/a"}), frozenset({"x"}))
    assert sink.done("pets", "2") == Done()
    table = read_parts(out)
    assert table is not None
    assert sorted(zip(table["model_name"].to_pylist(), table["uri"].to_pylist(), strict=True)) == [
        ("pets", "/a"),
        ("pets", "/bad"),
        ("places", "/a"),
    ]


def test_a_part_that_is_not_ours_is_named_with_what_to_do(tmp_path: Path) -> None:
    out = tmp_path / "scores"
    ParquetSink(out).write([_row("/a", "x")])
    pointer = out / "part-lfs-000000.parquet"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12345\n")
    with pytest.raises(BadDestination, match=r"part-lfs-000000.parquet is not a results part \(a Git LFS"):
        ParquetSink(out).done("lightbox", "3")
    with pytest.raises(BadDestination, match=r"move it out of .*scores, or give --out another folder"):
        read_parts(out)
    pointer.write_bytes(b"PAR1 but no parquet")
    with pytest.raises(BadDestination, match="is not a results part: "):
        read_parts(out)


def test_a_job_that_wrote_nothing_leaves_no_new_folder_behind(tmp_path: Path) -> None:
    new = tmp_path / "new" / "scores"
    ParquetSink(new).close()  # the source could not be listed, say
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "earlier"
    kept.mkdir()
    ParquetSink(kept).close()  # the user's folder: kept, empty or not
    assert kept.is_dir()
    written = tmp_path / "written"
    sink = ParquetSink(written)
    sink.write([_row("/a", "x")])
    sink.close()
    assert len(list(written.glob("part-*.parquet"))) == 1


def test_an_unusable_destination_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadDestination, match="LIGHTBOX_RESULTS_DSN"):
        open_sink("postgres", dsn=None, table="image_scores")
    with pytest.raises(BadDestination, match="local folder"):
        open_sink("s3://bucket/scores", dsn=None, table="image_scores")


def test_job_settings_take_the_dags_params_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.score_catalog import job_settings

    monkeypatch.setenv("LIGHTBOX_SCORE_ONLINE", "true")
    monkeypatch.setenv("LIGHTBOX_CATALOG_SOURCE", "/photos")
    settings, source, _, alias, version = job_settings(None, "models:/faces@challenger", None, False)
    assert (settings.model_name, settings.score_online, source) == ("faces", False, "/photos")
    assert (alias, version) == ("challenger", None)
    settings, source, _, alias, _ = job_settings("s3://b/p", None, None, None)  # empty params: settings
    assert (settings.score_online, source, alias) == (True, "s3://b/p", None)


def test_reservations_leave_a_read_task_room() -> None:
    check_reservations(1, 1.0, 1.0, 2.0)  # one actor and one read task on 2 CPUs
    check_reservations(2, 0.5, 0.5, 2.0)  # one single-thread actor per core, reads beside them
    with pytest.raises(ValueError, match="score_actors=2 at 1 CPU each") as err:
        check_reservations(2, 1.0, 1.0, 2.0)  # the reads would wait forever: refused, not hung
    assert "LIGHTBOX_RAY_NUM_CPUS" in str(err.value)
    with pytest.raises(ValueError):
        check_reservations(3, 0.5, 0.75, 2.0)


def test_actors_that_read_for_themselves_may_take_every_cpu() -> None:
    check_reservations(2, 1.0, 0.0, 2.0)
    with pytest.raises(ValueError, match="score_actors=3 at 1 CPU each would need more than"):
        check_reservations(3, 1.0, 0.0, 2.0)


def test_cpu_actors_decode_their_own_images_and_gpu_actors_are_fed_by_read_tasks(tmp_path: Path) -> None:
    def layout(gpus: int, node_cpus: list[float], **kw: object) -> tuple[int, bool, bool, int, int]:
        chosen = choose_layout(Settings(project_dir=tmp_path, **kw), gpus, node_cpus)  # type: ignore[arg-type]
        return chosen.actors, chosen.use_gpu, chosen.decode_in_actor, chosen.threads, chosen.calls

    # CPU: one actor per node on all of its own node's cores, reading its own images, with the server's
    # batches side by side (one per core, at most MAX_CPU_BATCH_STREAMS; the smallest node's count)
    assert layout(0, [2.0]) == (1, False, True, NODE_CPUS, 2)
    assert layout(0, [1.0]) == (1, False, True, NODE_CPUS, 2)  # still one decoding while one scores
    assert layout(0, [16.0, 8.0]) == (2, False, True, NODE_CPUS, MAX_CPU_BATCH_STREAMS)
    assert layout(0, [0.0, 3.0, 16.0]) == (2, False, True, NODE_CPUS, 3)  # a head without CPUs takes none
    # GPU: one actor per GPU, one call at a time, read tasks decode on every core
    assert layout(4, [32.0, 32.0])[:3] + layout(4, [32.0, 32.0])[4:] == (4, True, False, 1)
    # actors pinned to some nodes by a resource: the other nodes are there to decode
    assert layout(0, [2.0], score_actor_resources={"model_slot": 1}) == (1, False, False, 2, 1)
    # asked for: read tasks beside one actor, or two single-thread actors reading their own
    assert layout(0, [2.0], score_decode="tasks") == (1, False, False, 2, 1)
    assert layout(0, [2.0], score_actors=2, score_actor_threads=1) == (2, False, True, 1, 2)
    assert layout(2, [8.0], score_decode="actor")[:3] == (2, True, True)
    # fewer actors asked for than nodes: read tasks keep the other nodes busy
    assert layout(0, [8.0, 8.0], score_actors=1) == (1, False, False, 8, 1)


def test_a_decoding_actor_splits_its_cores_among_its_calls_models(tmp_path: Path) -> None:
    seen: list[int] = []

    class Model:
        def __init__(self, threads: int) -> None:
            seen.append(threads)

    per_node = choose_layout(Settings(project_dir=tmp_path), 0, [8.0])
    assert actor_calls(per_node, NODE_CPUS) == 4  # the scorer: its threads split among the calls
    assert actor_calls(per_node, 8) == 2  # the feature extractor keeps its own threads: two calls
    DecodeThen(Model, {"threads": NODE_CPUS}, {}, threads=8, calls=4)
    DecodeThen(Model, {"threads": NODE_CPUS}, {}, threads=2, calls=4)  # never below one thread
    DecodeThen(Model, {"threads": 3}, {}, threads=8, calls=4)  # threads asked for are each call's
    assert seen == [2, 1, 3]


def test_only_one_actor_per_node_waits_for_every_actor(tmp_path: Path) -> None:
    settings = Settings(project_dir=tmp_path)
    assert choose_layout(settings, 0, [4.0, 4.0]).wait_for_actors  # placeable by construction
    assert not choose_layout(settings, 0, [4.0]).wait_for_actors  # one node: nothing to balance
    assert not choose_layout(settings, 2, [4.0, 4.0]).wait_for_actors  # GPUs: Ray's default
    assert not choose_layout(Settings(project_dir=tmp_path, score_actors=4), 0, [4.0, 4.0]).wait_for_actors


def test_stream_clock_leaves_the_start_up_out() -> None:
    now = iter([10.0, 12.0, 13.0, 14.0])
    clock = StreamClock(clock=lambda: next(now))
    assert clock.images_per_s() is None  # nothing came out
    clock.batch(16)  # at 10 s: what Ray's start and the model load produced
    assert clock.images_per_s() is None  # one batch: no interval yet
    for _ in range(3):
        clock.batch(16)  # at 12, 13, 14 s
    assert clock.images_per_s() == pytest.approx(48 / 4.0)
    assert clock.first == 10.0 and clock.last == 14.0
    assert clock.steady_images_per_s() is None  # no total: no quarter mark


def test_the_steady_rate_starts_once_a_quarter_of_the_images_came_out() -> None:
    now = iter([10.0, 10.5, 11.0, 13.0, 15.0, 17.0])
    clock = StreamClock(clock=lambda: next(now), total=100)
    for images in (10, 10, 10):  # 10, 20, 30 images by 11 s: decoded ahead during the model load
        clock.batch(images)
    assert clock.steady_images_per_s() is None  # a quarter came at 11 s, nothing after it yet
    for images in (20, 20, 30):  # 100 images by 17 s
        clock.batch(images)
    assert clock.steady_images_per_s() == pytest.approx(70 / 6.0)  # not the 90 / 7 after the first


def test_a_name_that_is_not_utf8_is_left_out_and_counted(tmp_path: Path) -> None:
    """One Latin-1 name had failed the whole bulk job (pyarrow refused the URI) with no row written: it
    is counted in the summary as not listed, the other photos scored."""
    import os

    (tmp_path / "ok.png").write_bytes(_png())
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.png"), "wb") as f:
        f.write(_png())
    left_out: Counter[str] = Counter()
    assert listed_uris(str(tmp_path), left_out=left_out) == [str(tmp_path / "ok.png")]
    assert left_out == {"name not UTF-8: rename": 1}


def test_one_job_writes_a_results_folder_at_a_time(tmp_path: Path) -> None:
    """Two bulk jobs into one --out had each scored every image (two rows per image), and the second's
    start removed the first's part being written. The second is refused at once naming the first; the
    lock goes with its process (SIGKILL included), and the folder's readers never see the lock file."""
    import signal
    import subprocess
    import sys

    from lightbox.locks import Busy

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nfrom pathlib import Path\nfrom lightbox.results import ParquetSink\n"
            f"sink = ParquetSink(Path({str(out)!r}))\nprint('held', flush=True)\ntime.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        (out / "part-a-0.parquet.tmp").write_bytes(b"being written")
        with pytest.raises(
            Busy, match=rf"another bulk-scoring job writing to {out} is running \(process {holder.pid} "
        ):
            ParquetSink(out)
        assert (out / "part-a-0.parquet.tmp").exists()  # the running job's part is left alone
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    sink = ParquetSink(out)  # the killed job's lock went with it; its half-written part is removed
    assert not (out / "part-a-0.parquet.tmp").exists()
    sink.write([_row("/a", "x")])
    sink.close()
    assert [p.name for p in out.iterdir()] == [p.name for p in out.glob("part-*.parquet")]  # no lock file
    assert len(read_parts(out)) == 1
