"""The feature schema: what the feature job writes to Feast and what training reads, and what bulk
scoring publishes online for search and recommendation. Torch-free.

``features/definitions.py`` builds its Feast FeatureViews from ``FIELDS`` and ``SCORE_FIELDS``;
``training.model`` sizes the extractor's output from the same numbers; a feature row carries
``FEATURE_VERSION`` so that training refuses features made by another extractor.
"""

from __future__ import annotations

# Bump when the extractor's output changes: cached features of another version are recomputed.
FEATURE_VERSION = "efficientnet-lite0+quality+stats13/v1"
FEATURE_SERVICE = "image_quality_v1"
FEATURE_VIEW = "image_features"

EMBEDDING_DIM = 1280  # pooled last feature map: what the image shows (content tags)
QUALITY_DIM = 2 * (24 + 80 + 112)  # mean and spread of three intermediate feature maps
STAT_NAMES: tuple[str, ...] = (
    "brightness",
    "contrast",
    "luma_p02",
    "luma_p50",
    "luma_p98",
    "clipped_high",
    "clipped_low",
    "sharpness",
    "noise",
    "detail_ratio",
    "local_contrast",
    "local_contrast_median",
    "colourfulness",
)
FEATURE_DIM = EMBEDDING_DIM + QUALITY_DIM + len(STAT_NAMES)

# (name, kind, description): kind "vector" is Array(Float32), "float" Float32, "string" String, "map"
# Map (string -> number).
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("embedding", "vector", "EfficientNet-Lite0 pooled embedding"),
    ("quality", "vector", "mean/std of intermediate feature maps"),
    *((name, "float", "hand-crafted quality statistic") for name in STAT_NAMES),
    ("feature_version", "string", "the extractor that computed the row"),
)
# Feature groups the score head can read (the Tune search space picks one): quality statistics only, or
# everything (aesthetic ratings depend on content too).
SCORE_FEATURE_GROUPS: tuple[str, ...] = ("quality", "all")

# What bulk scoring (pipelines/score_catalog.py, --online) writes per (image, model name, model version):
# the model's answers and the embedding of the extractor it ran (EMBEDDING_DIM first columns of its
# output), so that a search or recommendation service reads them by id at online-store latency. Keyed by
# all three: a new version adds rows beside the old one's, a reader asks for the version it was built
# against, and two registered models with the same version number (pets v1, places v1) keep their own.
SCORE_VIEW = "image_scores"
SCORE_SERVICE = "image_scores_v1"
SCORE_KEYS: tuple[str, ...] = ("image_id", "model_name", "model_version")
SCORE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("score", "float", "the model's score on its own scale; absent for a tags-only model"),
    ("tag_probs", "map", "tag name -> probability"),
    ("embedding", "vector", "the model's extractor embedding (EMBEDDING_DIM floats)"),
)
