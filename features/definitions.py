"""Feature definitions: declarations only, safe to import (no I/O).

The offline parquet is written by pipelines/features.py with the same FeatureExtractor that the served
model runs. One FeatureService per feature version; the training run records which one it used.
"""

import os
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Array, Float32
from feast.value_type import ValueType

OFFLINE_DIR = os.environ.get("LIGHTBOX_FEAST_OFFLINE_PATH", ".lightbox/feast/offline")

image = Entity(name="image", join_keys=["image_id"], value_type=ValueType.STRING, description="one image")

image_features_source = FileSource(
    name="image_features_source",
    path=f"{OFFLINE_DIR}/image_features.parquet",
    timestamp_field="event_timestamp",
)

image_features = FeatureView(
    name="image_features",
    entities=[image],
    ttl=timedelta(days=3650),
    schema=[
        Field(name="embedding", dtype=Array(Float32), description="EfficientNet-Lite0 pooled embedding"),
        Field(name="quality", dtype=Array(Float32), description="mean/std of intermediate feature maps"),
        Field(name="brightness", dtype=Float32),
        Field(name="contrast", dtype=Float32),
        Field(name="luma_p02", dtype=Float32),
        Field(name="luma_p50", dtype=Float32),
        Field(name="luma_p98", dtype=Float32),
        Field(name="clipped_high", dtype=Float32),
        Field(name="clipped_low", dtype=Float32),
        Field(name="sharpness", dtype=Float32),
        Field(name="noise", dtype=Float32),
        Field(name="detail_ratio", dtype=Float32),
        Field(name="local_contrast", dtype=Float32),
        Field(name="local_contrast_median", dtype=Float32),
        Field(name="colourfulness", dtype=Float32),
    ],
    source=image_features_source,
    online=True,
    tags={"extractor": "efficientnet-lite0+quality+stats13/v1"},
)

image_quality_v1 = FeatureService(name="image_quality_v1", features=[image_features])

DEFINITIONS = [image, image_features_source, image_features, image_quality_v1]
