"""Stage: version the validated data folder with DVC and push it to the remote."""

from __future__ import annotations

from lightbox import manifest
from lightbox.adapters import dvc_repo
from lightbox.adapters.dvc_repo import DatasetVersion
from lightbox.settings import Settings


def run(settings: Settings) -> DatasetVersion:
    manifest.read_manifest(settings.data_dir)  # raises ManifestError saying what to run first
    manifest.read_label_spec(settings.data_dir)
    version = dvc_repo.version_data(settings)
    dvc_repo.save_version(settings, version)
    return version
