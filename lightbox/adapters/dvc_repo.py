"""DVC and git: version the data folder, push it to the remote, read any version back.

The only module that imports dvc. The remote lives in the committed .dvc/config (a path relative to
the repo, so the default works on every clone); a non-default remote (S3, ...) goes to
.dvc/config.local so that no credentials or machine paths are committed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from lightbox.settings import Settings

REMOTE_NAME = "lightbox"
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@dataclass(frozen=True)
class DatasetVersion:
    """What travels with every downstream artifact: enough to read the exact data back."""

    md5: str  # the data.dvc directory hash (ends with .dir)
    git_rev: str  # the commit holding that data.dvc ("" when not committed)
    path: str  # the tracked folder, relative to the repo
    files: int
    size: int
    remote: str

    @property
    def short(self) -> str:
        return self.md5.removesuffix(".dir")[:10]

    def to_dict(self) -> dict:
        return asdict(self)

    def uri(self) -> str:
        return f"dvc://{self.path}@{self.git_rev or 'worktree'}#md5={self.md5}"


def _git(root: Path, *args: str, check: bool = True) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=lightbox", "-c", "user.email=lightbox@localhost", *args],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def head_revision(root: Path) -> str:
    """The commit checked out in the git repository at ``root`` ("unknown" outside a repository)."""
    return _git(root, "rev-parse", "HEAD", check=False) or "unknown"


def ensure_repo(settings: Settings) -> None:
    """git + DVC repo with the default remote committed; idempotent."""
    root = settings.project_dir
    if not (root / ".git").exists():
        _git(root, "init", "-q")
    if not (root / ".dvc").exists():
        from dvc.repo import Repo

        init_log = logging.getLogger("dvc.repo.init")  # "You can now commit the changes": lightbox does
        level = init_log.level
        init_log.setLevel(logging.WARNING)
        try:
            Repo.init(str(root))
        finally:
            init_log.setLevel(level)
    cfg = root / ".dvc" / "config"
    text = cfg.read_text() if cfg.exists() else ""
    if f'remote "{REMOTE_NAME}"' not in text:
        default_url = os.path.relpath(settings.state / "dvc-remote", root / ".dvc")
        cfg.write_text(
            text + f"[core]\n    remote = {REMOTE_NAME}\n"
            f"['remote \"{REMOTE_NAME}\"']\n    url = {default_url}\n"
        )
        # Commit the remote config *before* any data version: DVC reads each revision's own config.
        # .dvc/.gitignore too: `dvc init` stages it, and left out it stayed staged for good.
        setup = [p for p in (".dvc/config", ".dvcignore", ".dvc/.gitignore") if (root / p).exists()]
        _git(root, "add", "--", *setup)
        _git(root, "commit", "-q", "-m", "dvc: default remote", "--", *setup, check=False)
    local = root / ".dvc" / "config.local"
    if settings.dvc_remote_url:
        lines = [f"['remote \"{REMOTE_NAME}\"']", f"    url = {settings.dvc_remote_url}"]
        if settings.dvc_endpoint_url:  # dvc_remote_endpoint_url, else the shared s3_endpoint_url
            lines.append(f"    endpointurl = {settings.dvc_endpoint_url}")
        local.write_text("\n".join(lines) + "\n")
    elif local.exists():
        local.unlink()


def remote_url(settings: Settings) -> str:
    return settings.dvc_remote_url or str(settings.state / "dvc-remote")


def version_data(settings: Settings) -> DatasetVersion:
    """dvc add + push the data folder, commit data.dvc, and return the version. Re-runnable."""
    return version_path(settings, settings.data_subdir)


def version_path(settings: Settings, subdir: str) -> DatasetVersion:
    """dvc add + push ``<project_dir>/<subdir>``, commit ``<subdir>.dvc``; returns its version.

    Re-runnable: unchanged content gives the same md5 and no new commit.
    """
    from dvc.repo import Repo

    ensure_repo(settings)
    root = settings.project_dir
    with Repo(str(root)) as repo:
        # DVC's hint to `git add` the .dvc file is for its own users: lightbox commits it below.
        repo.scm_context.quiet = settings.data_git_commit
        repo.add(str(root / subdir))  # absolute: DVC resolves relative paths against the cwd
        repo.push(remote=REMOTE_NAME)
    dvc_file = root / f"{subdir}.dvc"
    out = yaml.safe_load(dvc_file.read_text())["outs"][0]
    rev = ""
    if settings.data_git_commit:
        paths = [dvc_file.name] + [p for p in (".gitignore", ".dvc/.gitignore") if (root / p).exists()]
        _git(root, "add", "--", *paths)
        if _git(root, "status", "--porcelain", "--", *paths):
            _git(root, "commit", "-q", "-m", f"{subdir}: version {out['md5'][:10]}", "--", *paths)
        rev = _git(root, "rev-parse", "HEAD")
    return DatasetVersion(
        md5=out["md5"],
        git_rev=rev,
        path=subdir,
        files=int(out.get("nfiles", 0)),
        size=int(out.get("size", 0)),
        remote=remote_url(settings),
    )


def tracked_md5(settings: Settings, subdir: str) -> str | None:
    """The md5 recorded in ``<subdir>.dvc`` (None when the folder is not tracked)."""
    dvc_file = settings.project_dir / f"{subdir}.dvc"
    if not dvc_file.exists():
        return None
    return str(yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"])


def restore_path(settings: Settings, subdir: str) -> bool:
    """Check out ``<subdir>`` as ``<subdir>.dvc`` records it (from the cache, else the remote).

    False when neither holds it (a fresh clone with an empty local remote): the caller decides.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    with Repo(str(settings.project_dir)) as repo:
        try:
            repo.pull(targets=[str(settings.project_dir / f"{subdir}.dvc")], remote=REMOTE_NAME)
        except DvcException:
            return False
    return (settings.project_dir / subdir).exists()


def matches_tracked(settings: Settings, subdir: str) -> bool:
    """True when the files in ``<subdir>`` hash to exactly what ``<subdir>.dvc`` records."""
    from dvc.repo import Repo

    with Repo(str(settings.project_dir)) as repo:
        status = repo.status(targets=[str(settings.project_dir / f"{subdir}.dvc")])
        # DVC keys the status by the .dvc path relative to the current directory, so read every key:
        # looking up "golden.dvc" from another folder found nothing and called any golden set a match.
        entries = [e for found in status.values() for e in found]
        states = [s for e in entries for s in e.get("changed outs", {}).values()]
        if not states:
            return True
        if not all(s == "not in cache" for s in states):
            return False  # "modified": other bytes
        # "not in cache": DVC cannot compare (an empty cache, or a .dvc that never versioned these
        # files: the demo's golden.dvc beside an import's new golden slice). Hash the folder as
        # `dvc add` would, and compare.
        return _folder_md5(settings.project_dir / subdir, repo) == tracked_md5(settings, subdir)


def _folder_md5(folder: Path, repo: Any) -> str:
    """The md5 ``dvc add`` records for ``folder`` (``<md5>.dir``), computed without writing a cache."""
    import tempfile

    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db.local import LocalHashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as scratch:
        _, _, tree = build(
            LocalHashFileDB(fs, scratch), str(folder), fs, "md5", dry_run=True, ignore=repo.dvcignore
        )
    return str(tree.hash_info.value)


class DataUnavailable(LookupError):
    """A dataset version that cannot be read here: no such revision, or its data in no cache or remote."""


def read_file_at(settings: Settings, relpath: str, rev: str) -> bytes:
    """Read one file of the data folder as it was at a git revision (from cache or the remote)."""
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc_data.index import DataIndexError
    from scmrepo.exceptions import SCMError

    try:
        return dvc.api.read(
            f"{settings.data_subdir}/{relpath}", repo=str(settings.project_dir), rev=rev, mode="rb"
        )
    except (DvcException, DataIndexError, SCMError, FileNotFoundError) as exc:
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataUnavailable(
            f"cannot read the dataset at {rev!r}: {first} (the revision must exist in git, and its data "
            "in the DVC cache or remote: `lightbox data version` pushes each version)"
        ) from None


def remote_holds(settings: Settings, version: DatasetVersion) -> bool:
    """True when the remote has the directory manifest for this version (a local or s3:// remote)."""
    md5 = version.md5.removesuffix(".dir")
    relpath = f"files/md5/{md5[:2]}/{md5[2:]}.dir"
    url = remote_url(settings)
    if url.startswith("s3://"):
        from lightbox.adapters import s3

        # Same layout as a local remote, on the endpoint DVC pushed to.
        return s3.exists(f"{url.rstrip('/')}/{relpath}", settings.dvc_endpoint_url)
    if "://" in url:
        raise NotImplementedError(f"remote_holds: no check for {url}")
    return (Path(url) / relpath).exists()


class NoDatasetVersion(FileNotFoundError):
    """Training needs the dataset's version, and data/ has none (never versioned, or changed since)."""


_VERSION_FILE, _STALE_FILE = "dataset_version.json", "dataset_version.stale.json"


def save_version(settings: Settings, version: DatasetVersion) -> Path:
    path = settings.state / _VERSION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(version.to_dict(), indent=2))
    (settings.state / _STALE_FILE).unlink(missing_ok=True)
    return path


def mark_data_changed(settings: Settings) -> None:
    """data/ was rewritten (an import that changed it): its last version no longer describes it, so a
    model trained now must not be recorded as trained on that version (load_version refuses until
    ``lightbox data version`` runs)."""
    path = settings.state / _VERSION_FILE
    if path.exists():
        os.replace(path, settings.state / _STALE_FILE)


def load_version(settings: Settings) -> DatasetVersion:
    path = settings.state / _VERSION_FILE
    if not path.exists():
        if (settings.state / _STALE_FILE).exists():
            raise NoDatasetVersion(
                "data/ changed since it was last versioned: run `lightbox data version` (the lightbox_data "
                "DAG does it), then `lightbox features`"
            )
        raise NoDatasetVersion(
            "no dataset version yet: import your photos (`lightbox data import SOURCE`), then run "
            "`lightbox data version` and `lightbox features` (or trigger the lightbox_data DAG)"
        )
    version = DatasetVersion(**json.loads(path.read_text()))
    # data.dvc moved under the record: a `git checkout <rev> -- data.dvc` + `dvc checkout` to go back to
    # an older version. A run would train on that data while naming the newer version in its lineage.
    tracked = tracked_md5(settings, version.path or settings.data_subdir)
    if tracked is not None and tracked != version.md5:
        raise NoDatasetVersion(
            f"{version.path or settings.data_subdir}.dvc is at version {tracked[:10]}, but the last "
            f"`lightbox data version` recorded {version.md5[:10]}: run `lightbox data version` (the "
            "lightbox_data DAG does it), then `lightbox features`"
        )
    return version
