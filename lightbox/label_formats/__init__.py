"""Labelled-image export formats -> one list of records. Pure parsing: no image is read here.

The formats, detected from the source's files and, where names do not tell, the labels files' first
bytes (``detect``), or forced:

- ``imagefolder`` (Hugging Face): ``metadata.jsonl`` / ``metadata.csv`` with a ``file_name`` column
  (relative to the metadata file), a score column, a tags column, optional split and group columns;
  or split subfolders (``train/``, ``validation/`` or ``val/``, ``test/``) each with its own metadata.
- ``labelstudio``: a Label Studio export of an image project, ``JSON`` (tasks with
  ``annotations[].result[]``) or ``JSON_MIN`` (one flat row per annotation); ``Choices`` for tags,
  ``Rating`` or ``Number`` for the score. Several annotations of a task: the mean score, and a tag
  counts when most annotators chose it.
- ``classfolders`` (torchvision ImageFolder): ``root/<tag>/<image>``; no score.
- ``cvat``: CVAT's "CVAT for images 1.1" XML; an image's ``<tag>`` labels are its tags (object
  annotations label a region, not the photo), a tag attribute named with --score-column the score.
- ``fiftyone``: FiftyOne's ``FiftyOneImageClassificationDataset`` (``labels.json`` beside ``data/``)
  and ``FiftyOneDataset`` (``samples.json``: Classification(s) fields for tags, Regression for scores).
- ``celeba``: an attribute list in CelebA's layout (``list_attr_celeba.txt``): -1/1 flags, one-hot tags.
- ``ava``: AVA's ``AVA.txt`` (vote counts for the scores 1..10): the score is the mean vote.
- ``parquet``: Hugging Face's parquet shards, images embedded as bytes, ClassLabel names in the schema.
- ``groundtruth``: SageMaker Ground Truth output manifests (Rekognition Custom Labels' too): image
  classification attributes' classes are the tags.
- ``vertex``: Vertex AI image classification JSON lines or CSV: annotation display names, ``ml_use``.
- ``labelbox``: a Labelbox export (v2 NDJSON, or v1 JSON): classification answers (radio, checklist,
  nested) as tags, a number answer as the score; objects only counted; skipped rows left out.
- ``azureml``: an Azure Machine Learning data labeling export (JSON lines): ``label`` classes as tags.
- ``coco``: a COCO file whose annotations label the photo (Azure Machine Learning's COCO export of an
  image classification project): categories as tags; boxes and polygons only counted.

A row that cannot be read becomes a ``Problem`` (origin, reason) for the report; the others go on.

One module per part; this package re-exports their public names, so ``from lightbox.label_formats
import X`` is the way in:

- ``records``: ``Record``, ``Problem``, ``Parsed``, ``Columns``, ``FormatError`` and the shared cell
  parsing (tags, scores, flags, splits).
- ``detection``: ``FORMATS``, ``detect`` and ``sniff`` (a labels file's first bytes).
- ``tables``: imagefolder metadata (CSV, TSV, JSON lines, .xlsx workbooks, one-hot columns) and
  classfolders.
- ``cvat``, ``fiftyone``, ``celeba_ava`` (CelebA and AVA), ``hf_parquet``, ``labelstudio``, ``cloud``
  (Ground Truth and Vertex AI), ``labelbox``, ``azureml``, ``coco``: one format (or family) each.
- ``uris``: how a photo named by URL (a bucket's, a datastore's) is found in the source.
- ``names``: after parsing, the records' names matched to the disk's (``match_names``,
  ``unlisted_images``, ``tag_case_notes``).
"""

from __future__ import annotations

from lightbox.label_formats.azureml import parse_azureml
from lightbox.label_formats.celeba_ava import AVA_SCALE, CELEBA_PARTITION, parse_ava, parse_celeba
from lightbox.label_formats.cloud import parse_groundtruth, parse_vertex
from lightbox.label_formats.coco import parse_coco
from lightbox.label_formats.cvat import parse_cvat
from lightbox.label_formats.detection import FORMATS, SNIFF_BYTES, detect, sniff, sniffable
from lightbox.label_formats.fiftyone import parse_fiftyone
from lightbox.label_formats.hf_parquet import parquet_files, parse_parquet
from lightbox.label_formats.labelbox import parse_labelbox
from lightbox.label_formats.labelstudio import (
    Roots,
    is_labelstudio_table,
    parse_labelstudio,
    parse_labelstudio_table,
    resolve_ls_ref,
)
from lightbox.label_formats.names import match_names, tag_case_notes, unlisted_images
from lightbox.label_formats.records import (
    SCORE_COLUMNS,
    SPLIT_ALIASES,
    TAGS_COLUMNS,
    Columns,
    FormatError,
    Parsed,
    Problem,
    Record,
    parse_flag,
    parse_score_cell,
    parse_split,
    parse_tags_cell,
    space_separated,
    split_of_path,
)
from lightbox.label_formats.tables import (
    FILE_COLUMNS,
    METADATA_FILES,
    OTHER_SPREADSHEETS,
    TABLE_SUFFIXES,
    metadata_files,
    parse_classfolders,
    parse_imagefolder,
)

__all__ = [
    "SPLIT_ALIASES",
    "SCORE_COLUMNS",
    "TAGS_COLUMNS",
    "FormatError",
    "Record",
    "Problem",
    "Parsed",
    "Columns",
    "parse_tags_cell",
    "space_separated",
    "parse_flag",
    "parse_score_cell",
    "parse_split",
    "split_of_path",
    "FORMATS",
    "detect",
    "SNIFF_BYTES",
    "sniffable",
    "sniff",
    "METADATA_FILES",
    "TABLE_SUFFIXES",
    "OTHER_SPREADSHEETS",
    "FILE_COLUMNS",
    "metadata_files",
    "parse_imagefolder",
    "parse_classfolders",
    "parse_cvat",
    "parse_fiftyone",
    "parse_groundtruth",
    "parse_vertex",
    "parse_labelbox",
    "parse_azureml",
    "parse_coco",
    "CELEBA_PARTITION",
    "AVA_SCALE",
    "parse_celeba",
    "parse_ava",
    "parquet_files",
    "parse_parquet",
    "Roots",
    "resolve_ls_ref",
    "parse_labelstudio",
    "is_labelstudio_table",
    "parse_labelstudio_table",
    "match_names",
    "unlisted_images",
    "tag_case_notes",
]
