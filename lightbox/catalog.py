"""A catalog to score: the image URIs a source names, and the bytes behind one URI.

A source is a folder, an ``s3://bucket/prefix``, a text file with one URI a line, or a parquet file
with a ``uri`` column. URIs are absolute local paths or s3:// URLs; a relative path in a list is taken
relative to the list's folder. The catalog is only read: nothing here writes a user's files.

A folder or prefix lists each URI with its source version (``list_with_versions``): size and mtime, or
size and ETag, as the listing has them, so that bulk scoring tells a photo edited in place without
reading it. A list of URIs has none.
"""

from __future__ import annotations

import errno
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple, TypeVar

from lightbox.adapters import s3
from lightbox.imaging import extension, is_image_name
from lightbox.source_tree import SourceNotFound, SourceTree

T = TypeVar("T")
# left_out's key for the files whose names are not UTF-8 (lightbox.source_tree.undecodable).
NOT_UTF8 = "name not UTF-8: rename"

# A folder or prefix is listed by lightbox.imaging's image extensions: its sidecars (.json, .xmp) would
# each be an error row. A list names its images explicitly: every line is scored, whatever its extension.


class CatalogError(ValueError):
    """The source cannot be listed as given (the message says why)."""


class StorageUnavailable(OSError):
    """Reading a URI failed with an error that is not the image's fault, after every retry."""


class ImageUnreadable(OSError):
    """The file at a URI cannot be read and no retry would change that (permission denied, a symlink
    loop, a name too long): the image's fault, its row's error, like a missing file."""


# An OSError with one of these errnos is about the file itself: retrying reads it no better. Anything
# else (EIO, ETIMEDOUT, ECONNRESET, ESTALE on a network mount...) is storage trouble, retried.
PERMANENT_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EACCES,
        errno.EPERM,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.EINVAL,
        errno.ENXIO,
        errno.ENODEV,
        errno.EFBIG,
        errno.EOVERFLOW,
        errno.EILSEQ,
    }
)
# S3 error codes about one object (not the endpoint, the credentials or the clock): final for it. An
# AccessDenied (403) is left to stop the job: it is most often a policy on the whole bucket or prefix,
# and recorded per image it would mark a whole catalog failed, which a rerun skips.
PERMANENT_S3_CODES = frozenset({"InvalidObjectState"})


class Listed(NamedTuple):
    """A URI a source names, and its source version where the listing knows it."""

    uri: str
    # The file's size and mtime (``file_version``), or the object's size and ETag (s3.object_version);
    # None for a list of URIs, whose lines say nothing of the files, and for a file stat cannot reach.
    version: str | None


def list_with_versions(
    source: str, endpoint_url: str | None = None, left_out: Counter[str] | None = None
) -> Iterator[Listed]:
    """The URIs a source names, in a stable order (sorted for a folder or prefix, as written for a list),
    each with its source version: what tells a file edited in place from the one scored before, taken
    from the listing (os.stat, list_objects_v2) and never from the bytes. ``left_out`` counts, by
    extension, the files of a folder or prefix that are not images by name (a photographer's RAW files,
    sidecars): the job says what it did not score instead of leaving it out silently.

    Raises SourceNotFound for a source that does not exist, CatalogError for a parquet list without a
    ``uri`` column, a text list that is not UTF-8, or one image given as the source.
    """
    if source.startswith("s3://"):
        if source.endswith((".txt", ".parquet")):
            try:
                data = s3.read(source, endpoint_url)
            except s3.ObjectNotFound:
                raise SourceNotFound(f"no object at {source}: give an existing list, or a prefix") from None
            yield from _unversioned(_from_list(source, data, base=source.rsplit("/", 1)[0]))
            return
        root = source.rstrip("/")
        for key, version in s3.list_versions(root, endpoint_url):
            if is_image_name(key):
                yield Listed(f"{root}/{key}", version)
            elif left_out is not None:
                left_out[extension(key)] += 1
        return
    path = Path(source).expanduser().resolve()
    if path.is_dir():
        tree = SourceTree(str(path))
        for rel in tree.files():
            if is_image_name(rel):
                uri = str(path / rel)
                yield Listed(uri, file_version(uri))
            elif left_out is not None:
                left_out[extension(rel)] += 1
        if tree.undecodable and left_out is not None:  # no row can hold such a URI: said, not scored
            left_out[NOT_UTF8] += len(tree.undecodable)
        return
    if not path.is_file():
        raise SourceNotFound(f"{source} is neither a folder, an s3:// prefix nor a list of URIs")
    if is_image_name(path.name):
        raise CatalogError(f"{source} is one image: give its folder, or a list of URIs (one a line)")
    yield from _unversioned(_from_list(str(path), path.read_bytes(), base=str(path.parent)))


def _unversioned(uris: Iterable[str]) -> Iterator[Listed]:
    # A list's URIs are not stat'ed or HEAD-requested one by one: that is a round trip per image on S3,
    # the cost the listing spares. Their rows are skipped by URI, as before versions were recorded.
    return (Listed(uri, None) for uri in uris)


def file_version(path: str) -> str | None:
    """A local file's size and modification time (ns): a photo re-exported over its file changes the
    mtime, a copy that keeps the old mtime (cp -p, rsync -t) most often the size. None when stat fails
    (a symlink loop): the read says why, and the row is skipped by URI."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def _from_list(name: str, data: bytes, base: str) -> Iterator[str]:
    parquet = name.endswith(".parquet")
    if parquet:
        # Values are data: no comment rule (a photo may be named "#1 shoot.jpg"); spaces around a
        # value are stripped as a text list's are (a path never begins or ends with one on purpose).
        lines = (v.strip() for v in _parquet_uris(name, data))
    else:
        try:
            text = data.decode("utf-8-sig")  # -sig: a list saved by Excel or Notepad starts with a BOM
        except UnicodeDecodeError as exc:
            raise CatalogError(
                f"{name} is not UTF-8 text (byte {exc.start}): a list holds one URI a line; a parquet list"
                " needs the .parquet extension"
            ) from None
        lines = (line.strip() for line in text.splitlines())
    named = 0
    for line in lines:
        if line and (parquet or not line.startswith("#")):
            named += 1
            yield absolute_uri(line, base)
    if not named:
        what = "no `uri` values" if parquet else "no URIs (one a line, # starts a comment)"
        raise CatalogError(f"{name} is an empty list: it names {what}")


def _parquet_uris(name: str, data: bytes) -> Iterable[str]:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(io.BytesIO(data))
    except pa.ArrowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CatalogError(
            f"{name} is not a parquet file ({first}): a parquet list needs a `uri` column; a text list"
            " of URIs, one a line, needs the .txt extension"
        ) from None
    if "uri" not in schema.names:
        raise CatalogError(f"{name} has no `uri` column (columns: {', '.join(schema.names)})")
    column = pq.read_table(io.BytesIO(data), columns=["uri"]).column("uri")
    return (str(v) for v in column.to_pylist() if v is not None)


def absolute_uri(uri: str, base: str) -> str:
    """s3:// and absolute paths as they are; ``file://`` made a path; a relative path joined to ``base``."""
    if uri.startswith("s3://"):
        return uri
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        return unquote(urlsplit(uri).path)
    if uri.startswith("/"):
        return uri
    if base.startswith("s3://"):
        return f"{base.rstrip('/')}/{uri}"
    return str(Path(base) / uri)


def read_uri(uri: str, endpoint_url: str | None = None) -> bytes:
    """The bytes at a URI; FileNotFoundError when nothing is there (the image's fault, not storage's)."""
    if uri.startswith("s3://"):
        return s3.read(uri, endpoint_url)  # ObjectNotFound is a FileNotFoundError
    try:
        return Path(uri).read_bytes()
    except (IsADirectoryError, NotADirectoryError) as exc:
        raise FileNotFoundError(f"{uri} is not a file") from exc


def transient_errors() -> tuple[type[BaseException], ...]:
    """What a retry may cure: I/O and network errors, and S3's own (throttling, 5xx). botocore is
    imported here only: a local catalog never needs it."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)


def with_retries(
    read: Callable[[], T],
    *,
    attempts: int = 4,
    first_delay_s: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``read()``, tried again after a transient error with exponential backoff. A missing file
    (FileNotFoundError) is final at once, and so is an error about the file itself (ImageUnreadable:
    permission denied, a symlink loop; ``permanent``); the last transient error is raised as
    StorageUnavailable, so the job stops (and resumes later) instead of recording healthy images as
    failed."""
    transient = transient_errors()
    for attempt in range(attempts):
        try:
            return read()
        except (FileNotFoundError, ImageUnreadable):
            raise
        except transient as exc:
            if _not_found(exc):
                raise FileNotFoundError(str(exc)) from exc
            if permanent(exc):
                raise ImageUnreadable(str(exc)) from exc
            if attempt == attempts - 1:
                raise StorageUnavailable(f"{type(exc).__name__}: {exc} (after {attempts} attempts)") from exc
            sleep(first_delay_s * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def permanent(exc: BaseException) -> bool:
    """An error about the file or object itself, which no retry cures (see PERMANENT_ERRNOS and
    PERMANENT_S3_CODES); throttling, 5xx, timeouts and I/O errors are not."""
    if isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS:
        return True
    return _s3_code(exc) in PERMANENT_S3_CODES


def _s3_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code is not None else None


def _not_found(exc: BaseException) -> bool:
    """An S3 ClientError that says 404: the object is absent, which no retry cures."""
    return _s3_code(exc) in ("404", "NoSuchKey", "NotFound")
