"""Stage: version the validated data folder with DVC and push it to the remote."""

from __future__ import annotations

from lightbox.adapters import dvc_repo
from lightbox.adapters.dvc_repo import DatasetVersion
from lightbox.settings import Settings


def run(settings: Settings) -> DatasetVersion:
    manifest = settings.data_dir / "manifest.csv"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} is missing: run `lightbox data build` first")
    version = dvc_repo.version_data(settings)
    dvc_repo.save_version(settings, version)
    return version
