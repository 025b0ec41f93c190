"""Feast on the production backends: the SQL registry on PostgreSQL and the Redis online store, chosen by
settings alone and driven through the same adapter functions the pipelines call."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PgDatabase, unique

from lightbox.adapters import feast_store
from lightbox.feature_schema import EMBEDDING_DIM, FEATURE_VERSION, QUALITY_DIM, STAT_NAMES
from lightbox.settings import Settings


def _features(ids: list[str]) -> pd.DataFrame:
    """Rows shaped like pipelines/features.py writes them, with values we can recognise."""
    n = len(ids)
    df = pd.DataFrame(
        {
            "image_id": ids,
            "event_timestamp": pd.Timestamp(datetime.now(UTC).replace(microsecond=0)),
            "embedding": [np.full(EMBEDDING_DIM, i, np.float32) for i in range(n)],
            "quality": [np.full(QUALITY_DIM, -i, np.float32) for i in range(n)],
        }
    )
    for name in STAT_NAMES:
        df[name] = np.linspace(0.1, 0.9, n, dtype=np.float32)
    df["feature_version"] = FEATURE_VERSION
    return df


@pytest.fixture
def production_feast(tmp_path: Path, pg_database: PgDatabase, redis_addr: str) -> Iterator[Settings]:
    settings = Settings(
        project_dir=tmp_path,
        feast_project=unique(),  # the Redis keys and registry rows of this run only
        feast_registry=pg_database.sqlalchemy_url(),
        feast_online_store="redis",
        feast_redis=redis_addr,
    )
    yield settings
    feast_store.teardown(settings)


def test_settings_alone_select_the_sql_registry_and_redis(production_feast: Settings) -> None:
    store = feast_store.open_store(production_feast)
    assert type(store.registry).__name__ == "SqlRegistry"
    assert store.config.online_store.type == "redis"
    assert store.config.project == production_feast.feast_project


def test_materialized_features_are_read_back_from_redis(production_feast: Settings) -> None:
    import redis

    ids = [f"img-{i:02d}" for i in range(5)]
    feast_store.write_offline(production_feast, _features(ids))
    feast_store.apply_and_materialize(production_feast)

    online = feast_store.online(production_feast, [ids[3], ids[0], "never-seen"])
    assert online["image_id"] == [ids[3], ids[0], "never-seen"]
    np.testing.assert_array_equal(online["embedding"][0], np.full(EMBEDDING_DIM, 3, np.float32))
    np.testing.assert_array_equal(online["quality"][1], np.zeros(QUALITY_DIM, np.float32))
    assert online["embedding"][2] is None  # an unknown id is a miss, not an error

    # The rows live in Redis under this project's keys (Feast suffixes every key with the project).
    host, port = production_feast.feast_redis.split(":")
    keys = list(redis.Redis(host=host, port=int(port)).scan_iter(f"*{production_feast.feast_project}"))
    assert len(keys) == len(ids)

    # A second process (a fresh store object) sees the same registry: it lives in PostgreSQL.
    assert feast_store.open_store(production_feast).get_feature_service(production_feast.feature_service)

    feast_store.teardown(production_feast)
    assert not list(redis.Redis(host=host, port=int(port)).scan_iter(f"*{production_feast.feast_project}"))
