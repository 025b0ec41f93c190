"""Bulk scoring with --online publishes each scored image's score, tag probabilities and embedding to
Feast (embedded profile: SQLite online store), keyed by (image id, model name, model version): a service
reading by id gets exactly what the job wrote to its results, and the embedding of the version's own
extractor; two registered models with the same version number each get their own rows."""

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
        settings,
        [
            (ids[3], "lightbox", version),
            (ids[0], "lightbox", version),
            (ids[1], "lightbox", "999"),
            ("0" * 16, "lightbox", version),
        ],
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
    assert (
        feast_store.online_scores(settings, [(ids[3], "lightbox", version)])["score"] == online["score"][:1]
    )


def test_two_models_with_the_same_version_each_keep_their_results_and_online_rows(tmp_path: Path) -> None:
    """pets v1 and places v1, served together (lightbox serve --models pets@champion,places@champion):
    scoring a catalog with one, then the other into the same folder and the same online store, scores it
    twice, and a reader gets each model's own row by (image id, model name, version)."""
    from registry_samples import register_champion

    import mlflow

    root = tmp_path / "project"
    previous = mlflow.get_tracking_uri()
    try:
        pets = register_champion(Settings(project_dir=root, model_name="pets"), seed=1)
        places = register_champion(Settings(project_dir=root, model_name="places"), seed=2)
    finally:
        mlflow.set_tracking_uri(previous)
    assert pets == places == "1"
    pics = tmp_path / "pics"
    pics.mkdir()
    data = {f"{i}.jpg": jpeg(photo(400 + i)) for i in range(3)}
    for name, body in data.items():
        (pics / name).write_bytes(body)
    ids = [content_id(body) for body in data.values()]
    feast = tmp_path / "feast"
    common = {
        "project_dir": root,
        "ray_num_cpus": 2,
        "score_batch_size": 4,
        "score_online": True,
        "feast_registry": str(feast / "registry.db"),
        "feast_online_store_path": str(feast / "online.db"),
        "feast_offline_dir": str(feast / "offline"),
    }
    out = str(tmp_path / "scores")

    first = score_catalog.run(Settings(**common, model_name="pets"), str(pics), out)
    second = score_catalog.run(Settings(**common, model_name="places"), str(pics), out)
    assert (first.scored, first.skipped, first.online) == (3, 0, 3)
    assert (second.model_name, second.scored, second.skipped, second.online) == ("places", 3, 0, 3)
    again = score_catalog.run(Settings(**common, model_name="pets"), str(pics), out)
    assert (again.scored, again.skipped) == (0, 3)

    table = read_parts(tmp_path / "scores")
    assert table is not None
    written = {(r["image_id"], r["model_name"]): r["score"] for r in table.to_pylist()}
    assert len(written) == 6
    settings = Settings(**common)
    keys = [(i, name, "1") for name in ("pets", "places") for i in ids]
    online = feast_store.online_scores(settings, keys)
    assert online["model_name"] == [k[1] for k in keys]
    assert online["score"] == pytest.approx([written[i, name] for i, name, _ in keys], abs=1e-6)
    assert online["score"][:3] != pytest.approx(online["score"][3:], abs=1e-6)  # two models, two answers


def test_a_registry_of_the_old_keys_is_applied_again_and_its_rows_republished(tmp_path: Path) -> None:
    """A store that earlier versions applied keyed the scores view by (image id, version) only: the next
    apply (every publishing job's first step) re-keys it, and writes the rows of its offline parts online
    again under the new keys, the newest of each, so readers find what was published before."""
    from datetime import UTC, datetime, timedelta

    from feast import Entity, FeatureService, FeatureView, Field, FileSource
    from feast.types import Array, Float32, Map, String
    from feast.value_type import ValueType

    feast = tmp_path / "feast"
    settings = Settings(
        project_dir=tmp_path,
        feast_registry=str(feast / "registry.db"),
        feast_online_store_path=str(feast / "online.db"),
        feast_offline_dir=str(feast / "offline"),
    )
    image = Entity(name="image", join_keys=["image_id"], value_type=ValueType.STRING)
    version = Entity(name="model_version", join_keys=["model_version"], value_type=ValueType.STRING)
    old_view = FeatureView(  # features/definitions.py as it was
        name="image_scores",
        entities=[image, version],
        ttl=timedelta(days=3650),
        schema=[
            Field(name="score", dtype=Float32),
            Field(name="tag_probs", dtype=Map),
            Field(name="embedding", dtype=Array(Float32)),
            Field(name="model_name", dtype=String),
        ],
        source=FileSource(
            name="image_scores_source",
            path=str(feast_store.scores_dir(settings)),
            timestamp_field="event_timestamp",
        ),
        online=True,
    )
    store = feast_store.open_store(settings)
    store.apply([image, version, old_view, FeatureService(name="image_scores_v1", features=[old_view])])

    def frame(name: str, scores: list[float], when: datetime) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "image_id": ["a", "b"][: len(scores)],
                "model_version": "1",
                "event_timestamp": pd.Series([pd.Timestamp(when)] * len(scores), dtype="datetime64[us, UTC]"),
                "score": pd.Series(scores, dtype="float32"),
                "tag_probs": [{"t": s} for s in scores],
                "embedding": [np.full(EMBEDDING_DIM, s, np.float32) for s in scores],
                "model_name": name,
            }
        )

    now = datetime.now(UTC)
    feast_store.write_scores(
        settings, store, frame("pets", [0.25, 0.5], now - timedelta(hours=1)), "part-x-0"
    )
    feast_store.write_scores(settings, store, frame("pets", [0.75], now), "part-w-0")  # a's newer row

    feast_store.apply(settings)
    keys = [("a", "pets", "1"), ("b", "pets", "1"), ("a", "places", "1")]
    online = feast_store.online_scores(settings, keys)
    assert online["score"] == pytest.approx([0.75, 0.5, None])
    assert online["tag_probs"][1] == pytest.approx({"t": 0.5})
    assert online["model_name"] == ["pets", "pets", "places"]

    # Another model's version 1 is published beside, and a second apply changes nothing.
    store = feast_store.apply(settings)
    new = frame("places", [0.125], now).assign(model_name="places")
    feast_store.write_scores(settings, store, new, "part-y-0")
    assert feast_store.online_scores(settings, keys)["score"] == pytest.approx([0.75, 0.5, 0.125])
