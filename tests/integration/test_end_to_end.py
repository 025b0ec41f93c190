"""The whole lifecycle through Airflow on a user's own photos, with the real frameworks, then the server,
on the embedded defaults (SQLite, local folders, local Ray).

The photos are a small rated and tagged shoot with a made-up vocabulary and a 1-10 rating (written by
tests/photo_samples.py): imported by lightbox_data's ``source`` param, validated, versioned, featurized,
tuned, gated on the golden slice the import set aside, promoted and served on the dataset's own scale.
One module-scoped run; each test checks one promise. The checks live in tests/lifecycle.py: the
production profile (tests/services) runs the same ones on the synthetic demo set.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lifecycle import LENIENT_GATES, LifecycleChecks, free_port, run_lifecycle
from photo_samples import VOCAB, learnable_collection

from lightbox import manifest
from lightbox.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def shoot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return learnable_collection(tmp_path_factory.mktemp("user") / "shoot", 72)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, shoot: Path) -> Settings:
    settings = Settings(
        project_dir=tmp_path_factory.mktemp("project"),
        serve_port=free_port(),
        min_tag_count=3,
        **LENIENT_GATES,  # type: ignore[arg-type]
    )
    conf = {"source": str(shoot), "score_column": "rating", "tags_column": "labels", "score_range": "1,10"}
    return run_lifecycle(settings, conf)


class TestEmbeddedProfile(LifecycleChecks):
    def test_the_dataset_declares_the_users_labels(self, project: Settings, shoot: Path) -> None:
        spec = manifest.read_label_spec(project.data_dir)
        assert spec.tags == VOCAB and spec.score_range == (1.0, 10.0) and spec.score_name == "rating"
        golden = manifest.read_manifest(project.golden_dir)
        assert golden and {r["split"] for r in golden} == {"golden"}
        assert len(golden) + len(manifest.read_manifest(project.data_dir)) == 72
