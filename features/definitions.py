"""Feature definitions: declarations only, safe to import (no I/O).

Built from the one feature schema (lightbox.feature_schema), which the feature job writes and training
reads. The offline parquet is written by pipelines/features.py with the same FeatureExtractor that the
served model runs. One FeatureService per feature version; the training run records which one it used.
"""

import os
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Array, Float32, String
from feast.value_type import ValueType

from lightbox.feature_schema import FEATURE_SERVICE, FEATURE_VERSION, FEATURE_VIEW, FIELDS

OFFLINE_DIR = os.environ.get("LIGHTBOX_FEAST_OFFLINE_PATH", ".lightbox/feast/offline")
_TYPES = {"vector": Array(Float32), "float": Float32, "string": String}

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

DEFINITIONS = [image, image_features_source, image_features, image_quality_v1]
