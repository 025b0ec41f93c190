"""Feature definitions: declarations only, safe to import (no I/O).

Built from the one feature schema (lightbox.feature_schema), which the feature job writes and training
reads. The offline parquet is written by pipelines/features.py with the same FeatureExtractor that the
served model runs. One FeatureService per feature version; the training run records which one it used.

``image_scores`` is what bulk scoring publishes (pipelines/score_catalog.py --online): each model
version's score, tag probabilities and embedding per image, keyed by (image_id, model_name,
model_version): two registered models may both have a version 1. Its offline source is a folder of
parquet parts, one per flush of a job.
"""

import os
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Array, ComplexFeastType, Float32, Map, PrimitiveFeastType, String
from feast.value_type import ValueType

from lightbox.feature_schema import (
    FEATURE_SERVICE,
    FEATURE_VERSION,
    FEATURE_VIEW,
    FIELDS,
    SCORE_FIELDS,
    SCORE_SERVICE,
    SCORE_VIEW,
)

OFFLINE_DIR = os.environ.get("LIGHTBOX_FEAST_OFFLINE_PATH", ".lightbox/feast/offline")
_TYPES: dict[str, ComplexFeastType | PrimitiveFeastType] = {
    "vector": Array(Float32),
    "float": Float32,
    "string": String,
    "map": Map,
}

image = Entity(
    name="image", join_keys=["image_id"], value_type=ValueType.STRING, description="one image (content hash)"
)

image_features_source = FileSource(
    name="image_features_source",
    path=f"{OFFLINE_DIR}/image_features.parquet",
    timestamp_field="event_timestamp",
)

image_features = FeatureView(
    name=FEATURE_VIEW,
    entities=[image],
    ttl=timedelta(days=3650),
    schema=[Field(name=name, dtype=_TYPES[kind], description=text) for name, kind, text in FIELDS],
    source=image_features_source,
    online=True,
    tags={"extractor": FEATURE_VERSION},
)

image_quality_v1 = FeatureService(name=FEATURE_SERVICE, features=[image_features])

model = Entity(
    name="model_name",
    join_keys=["model_name"],
    value_type=ValueType.STRING,
    description="a registered model (its registry name)",
)

model_version = Entity(
    name="model_version",
    join_keys=["model_version"],
    value_type=ValueType.STRING,
    description="a registered version of the model (its registry number)",
)

image_scores_source = FileSource(
    name="image_scores_source",
    path=f"{OFFLINE_DIR}/{SCORE_VIEW}",  # a folder: each flush of a job adds a part
    timestamp_field="event_timestamp",
)

image_scores = FeatureView(
    name=SCORE_VIEW,
    entities=[image, model, model_version],
    ttl=timedelta(days=3650),
    schema=[Field(name=name, dtype=_TYPES[kind], description=text) for name, kind, text in SCORE_FIELDS],
    source=image_scores_source,
    online=True,
)

image_scores_v1 = FeatureService(name=SCORE_SERVICE, features=[image_scores])

DEFINITIONS = [
    image,
    image_features_source,
    image_features,
    image_quality_v1,
    model,
    model_version,
    image_scores_source,
    image_scores,
    image_scores_v1,
]
