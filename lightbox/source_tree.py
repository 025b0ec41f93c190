"""An import source as a read-only tree of files: a local folder (or one file) or an s3:// prefix.

The importer only lists and reads: a user's own files are never written, moved or deleted.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lightbox.adapters import s3

# An s3:// key with one of these endings is one labels file, not a prefix.
LABELS_FILE_SUFFIXES: tuple[str, ...] = (
    ".json",
    ".jsonl",
    ".csv",
    ".tsv",
    ".xlsx",
    ".xml",
    ".txt",
    ".parquet",
    ".manifest",
)


# How a Git LFS pointer file starts: what a clone without its LFS objects holds where a file belongs.
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


class SourceNotFound(FileNotFoundError):
    """The source (or a file it names) does not exist."""


def undecodable(name: str) -> bool:
    """Whether a local name is not valid UTF-8 (Python holds its bytes as surrogates): a Latin-1 name
    from an old Windows zip or a camera card. Such a name cannot be written to a manifest, a report,
    parquet or PostgreSQL, so the listing leaves it out and says so."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def shown(name: str) -> str:
    """A name as text a report can hold: its bytes that are not UTF-8 as ``\\xe9`` escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


RENAME_HINT = "rename them to UTF-8 (e.g. `convmv -f latin1 -t utf-8 -r --notest FOLDER`)"


@dataclass(frozen=True)
class SourceTree:
    root: str  # a local folder path or an s3://bucket/prefix URL
    endpoint_url: str | None = None
    single_file: str | None = None  # the source was one file (an export): its name under root
    # Filled by files(): the local names left out as not UTF-8 (shown()), for the report to list.
    undecodable: list[str] = field(default_factory=list, compare=False, repr=False)

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    def files(self) -> list[str]:
        """Every file under the root, '/'-separated and relative to it (only the file, for a file source)."""
        if self.single_file is not None:
            return [self.single_file]
        if self.is_s3:
            return s3.list_keys(self.root, self.endpoint_url)
        self.undecodable.clear()
        return sorted(_walk(self.root, skipped=self.undecodable))

    def undecodable_note(self) -> list[str]:
        """The report's note on the names files() left out as not UTF-8 (none: [])."""
        if not self.undecodable:
            return []
        n, some = len(self.undecodable), ", ".join(self.undecodable[:5])
        more = ", ..." if n > 5 else ""
        return [f"{n} files whose names are not UTF-8 were not read ({some}{more}): {RENAME_HINT}"]

    def files_beside(self, refs: Iterable[str]) -> list[str]:
        """The files of each local folder that ``refs`` point into (not below them), named as the refs
        name them: where a labels table given as SOURCE keeps its photos. [] on S3."""
        if self.is_s3:
            return []
        out: list[str] = []
        for folder in sorted({posixpath.dirname(r) for r in refs if not r.startswith("s3://")}):
            path = Path(folder) if os.path.isabs(folder) else Path(self.root) / folder
            try:
                names = sorted(e.name for e in os.scandir(path) if e.is_file() and not e.name.startswith("."))
            except OSError:
                continue  # a folder that is not there: its names are reported missing
            out += [posixpath.join(folder, n) if folder else n for n in names]
        return out

    def files_below(self, limit: int = 200_000) -> list[str]:
        """The files under a labels file's own folder, for its names to be found in a folder below it
        (KonIQ's table beside ``1024x768/``): at most ``limit``, since that folder may be a home folder.
        [] on S3 and for a folder source (whose ``files()`` are all of them already)."""
        if self.is_s3 or self.single_file is None:
            return []
        return _walk(self.root, limit)

    def read(self, ref: str) -> bytes:
        """Bytes of ``ref``: relative to the root, an absolute local path, or an s3:// URL."""
        if ref.startswith("s3://"):
            try:
                return s3.read(ref, self.endpoint_url)
            except s3.ObjectNotFound:
                raise SourceNotFound(f"no object at {ref}") from None
        if self.is_s3 and not posixpath.isabs(ref):
            return self.read(self.root.rstrip("/") + "/" + ref)
        path = Path(ref) if os.path.isabs(ref) else Path(self.root) / ref
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise SourceNotFound(f"{path} does not exist") from None

    def local_path(self, ref: str) -> str | None:
        """The local file ``ref`` is (for a reader that streams a large file from disk); None on S3."""
        if self.is_s3 or ref.startswith("s3://"):
            return None
        return ref if os.path.isabs(ref) else str(Path(self.root) / ref)

    def read_head(self, ref: str, size: int) -> bytes:
        """The first ``size`` bytes of ``ref``, to tell a labels file's format by its content (all of it on
        S3, where the file is small beside the photos)."""
        if self.is_s3 or ref.startswith("s3://"):
            return self.read(ref)[:size]
        path = Path(ref) if os.path.isabs(ref) else Path(self.root) / ref
        try:
            with path.open("rb") as f:
                return f.read(size)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise SourceNotFound(f"{path} does not exist") from None

    def locate(self, ref: str) -> str:
        """Where ``ref`` is, for messages and Label Studio's roots."""
        if ref.startswith("s3://") or os.path.isabs(ref):
            return ref
        return self.root.rstrip("/") + "/" + ref


def _walk(root: str, limit: int | None = None, skipped: list[str] | None = None) -> list[str]:
    """The files under a local ``root`` (hidden ones and hidden folders left out), '/'-separated and
    relative to it; the first ``limit`` of them when one is given. A name that is not UTF-8 (its own or
    a folder's) is left out, and added to ``skipped`` as shown().

    Symlinked folders are followed (a photo library often links its years or a second disk in), each
    real folder once: the folders reached without a link first, named by their own path, then the
    linked ones not seen yet, named by the link's path. A link back up the tree (a loop) or to a folder
    already listed adds nothing."""
    out: list[str] = []
    seen: set[str] = set()  # real paths of the folders listed
    pending = [(root, "")]  # (a folder to walk, its name relative to root)
    while pending:
        top, prefix = pending.pop(0)
        if os.path.realpath(top) in seen:
            continue
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            real = os.path.realpath(dirpath)
            if real in seen:  # a folder reached without a link, already listed from a link's side
                dirnames[:] = []
                continue
            seen.add(real)
            rel = Path(dirpath).relative_to(top).as_posix()
            base = prefix if rel == "." else f"{prefix}/{rel}" if prefix else rel
            visible = sorted(d for d in dirnames if not d.startswith("."))
            links = [d for d in visible if os.path.islink(os.path.join(dirpath, d))]
            pending += [(os.path.join(dirpath, d), f"{base}/{d}" if base else d) for d in links]
            dirnames[:] = [d for d in visible if d not in links]
            for f in filenames:
                if f.startswith("."):
                    continue
                name = f"{base}/{f}" if base else f
                if undecodable(name):
                    if skipped is not None:
                        skipped.append(shown(name))
                    continue
                out.append(name)
            if limit is not None and len(out) >= limit:
                return out[:limit]
    return out


def open_tree(source: str, endpoint_url: str | None) -> SourceTree:
    """A folder, a single export file, or an s3:// prefix (a key ending as a labels file does is a file)."""
    if source.startswith("s3://"):
        base, name = posixpath.split(source.rstrip("/"))
        if name.lower().endswith(LABELS_FILE_SUFFIXES):
            return SourceTree(base, endpoint_url, single_file=name)
        return SourceTree(source.rstrip("/"), endpoint_url)
    path = Path(source).expanduser()
    if path.is_file():
        return SourceTree(str(path.resolve().parent), single_file=path.name)
    if not path.is_dir():
        raise SourceNotFound(f"{source} is neither a folder nor a file: give the folder of your photos")
    return SourceTree(str(path.resolve()))
