"""Bulk scoring with --online publishes each scored image's score, tag probabilities and embedding to
Feast (embedded profile: SQLite online store), keyed by (image id, model version): a service reading by
id gets exactly what the job wrote to its results, and the embedding of the version's own extractor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from photo_samples import jpeg, photo

from lightbox.adapters import feast_store
from lightbox.feature_schema import EMBEDDING_DIM
from lightbox.imaging import preprocess_bytes
from lightbox.photos import content_id
from lightbox.results import read_parts
from lightbox.settings import Settings
from pipelines import score_catalog
from training.predictor import RegistryLoader

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_online_features_by_image_id_are_what_the_job_wrote(registered_champion, tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    data = {f"{i}.jpg": jpeg(photo(300 + i)) for i in range(5)}
    for name, body in data.items():
        (pics / name).write_bytes(body)
    (pics / "broken.jpg").write_bytes(b"not an image")
    feast = tmp_path / "feast"
    settings = Settings(
        project_dir=registered_champion.settings.project_dir,
        ray_num_cpus=2,
        score_batch_size=2,
        score_part_rows=3,
        score_online=True,
        feast_registry=str(feast / "registry.db"),
        feast_online_store_path=str(feast / "online.db"),
        feast_offline_dir=str(feast / "offline"),
    )
    version = registered_champion.version

    result = score_catalog.run(settings, str(pics), str(tmp_path / "scores"))
    assert (result.scored, result.failed, result.online) == (5, 1, 5)
    offline = pd.read_parquet(feast_store.scores_dir(settings))  # the view's history: every part
    assert len(offline) == 5 and set(offline["model_version"]) == {registered_champion.version}

    table = read_parts(tmp_path / "scores")
    assert table is not None
    written = {r["image_id"]: r for r in table.to_pylist() if r["error"] is None}
    ids = [content_id(body) for body in data.values()]
    online = feast_store.online_scores(
        settings, [(ids[3], version), (ids[0], version), (ids[1], "999"), ("0" * 16, version)]
    )
    assert online["image_id"] == [ids[3], ids[0], ids[1], "0" * 16]
    for i, image_id in enumerate([ids[3], ids[0]]):
        row = written[image_id]
        assert online["score"][i] == pytest.approx(row["score"], abs=1e-6)
        assert online["tag_probs"][i] == pytest.approx(dict(row["tag_probs"]), abs=1e-6)
        assert online["model_name"][i] == "lightbox"
    assert online["score"][2] is None and online["embedding"][3] is None  # another version, unknown id

    # The embedding is the version's own extractor output (its first EMBEDDING_DIM columns).
    predictor = RegistryLoader(settings, settings.champion_alias).load(version)
    pixels = np.stack([preprocess_bytes(data[n], max_pixels=settings.max_pixels) for n in ("3.jpg", "0.jpg")])
    with torch.inference_mode():
        expected = predictor.model.extractor(torch.from_numpy(pixels))[:, :EMBEDDING_DIM].numpy()
    got = np.array(online["embedding"][:2], np.float32)
    assert got.shape == (2, EMBEDDING_DIM)
    np.testing.assert_allclose(got, expected, atol=1e-4)

    # A rerun scores nothing and publishes nothing: the rows online stay the job's.
    again = score_catalog.run(settings, str(pics), str(tmp_path / "scores"))
    assert (again.scored, again.online) == (0, 0)
    assert feast_store.online_scores(settings, [(ids[3], version)])["score"] == online["score"][:1]
