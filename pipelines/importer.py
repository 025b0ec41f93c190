"""Stage 1: import a labelled image collection into ``settings.data_dir`` (the one path into data/).

Reads SOURCE (a folder, an export file or an s3:// prefix; never written), parses its format
(lightbox.label_formats), checks every photo (lightbox.photos), then writes a complete new dataset
folder beside data/ and swaps it in::

    data/images/<sha256[:16]>.<ext>   byte-for-byte copies of the accepted photos (staged beside data/
                                      as they are checked: no photo stays in memory)
    data/manifest.csv                 lightbox.manifest.COLUMNS
    data/labels.json                  the LabelSpec: tag vocabulary with counts, score name and range

Bad photos and rows are listed with their reason in ``<reports_dir>/import.{json,md}`` and copied (not
moved) to ``<quarantine_dir>/<stamp>/``; the import fails only past ``max_quarantine_fraction``, and
then nothing in data/ changes. Image ids are content hashes, so importing the same folder again writes
the same bytes (no new DVC version) and the same photo under two names is one image. Near duplicates
(perceptual hash) share a group, and a group never straddles train/validation/test.

On the first import of a user's dataset a slice of groups (``golden_fraction``) is set aside into
``settings.golden_dir``: the frozen golden set the gates judge on, never trained on.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import threading
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from lightbox import label_formats as formats
from lightbox import manifest
from lightbox.imaging import ImageDecodeError, is_image_name
from lightbox.label_formats import Columns, Parsed, Problem, Record
from lightbox.locks import exclusive
from lightbox.manifest import GOLDEN_SPLIT, IMAGES_SUBDIR, SPLITS, LabelSpec, ManifestError
from lightbox.owner import process_alive
from lightbox.photos import PhotoInfo, inspect, near_duplicate_pairs
from lightbox.progress import progress
from lightbox.settings import Settings
from lightbox.source_tree import LFS_POINTER, SourceNotFound, SourceTree, open_tree

log = logging.getLogger(__name__)
REPORT_NAME = "import"


class ImportFailed(RuntimeError):
    """The import was refused; data/ is unchanged. The message says why and where the report is."""


@dataclass(frozen=True)
class ImportOptions:
    format: str | None = None  # None: detected
    score_column: str | None = None
    tags_column: str | None = None
    split_column: str | None = None
    group_column: str | None = None
    score_range: str | None = None  # "LOW,HIGH"; None: the observed min and max
    local_files_root: str | None = None
    media_root: str | None = None
    append: bool = False
    golden: str | None = None  # a user-supplied golden source (any format); None: set a slice aside
    source_format: str | None = None  # recorded in the label spec instead of the parsed format
    source_label: str | None = None  # recorded as the source instead of SOURCE (a temporary folder)


@dataclass
class ImportResult:
    data_dir: str
    source: str
    format: str
    n_images: int
    n_new: int  # images not in the dataset before this import
    n_quarantined: int
    changed: bool  # False when the import wrote nothing (same data as before)
    splits: dict[str, int]
    n_golden: int  # images in the golden set (set aside now, or before)
    tags: list[str]  # the training vocabulary
    excluded_tags: list[str]
    score_name: str | None
    score_range: list[float] | None
    score_range_source: str
    exact_duplicates: int
    near_duplicate_groups: int
    report: str
    notes: list[str] = field(default_factory=list)


@dataclass
class Photo:
    """One accepted image: its merged labels and what its bytes told us."""

    info: PhotoInfo
    origins: list[str]
    scores: list[float]  # one per labelled record of this content (the same photo under two names)
    tags: tuple[str, ...]
    split: str | None
    group: str | None
    extra: dict[str, str]
    ref: str  # where the first record's file is (copied to the quarantine if refused later)
    conflicts: list[str] = field(default_factory=list)  # "A = B (score 5 vs 7)": differing labels merged

    @property
    def score(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None


# --- the stage ------------------------------------------------------------------------------------------


def run(settings: Settings, source: str, options: ImportOptions | None = None) -> ImportResult:
    """Import ``source`` into data/ (and the golden slice into golden/), one import per project at a time:
    raises lightbox.locks.Busy, having changed nothing, while another runs."""
    with exclusive(settings, "import"):
        return _run(settings, source, options or ImportOptions())


def _run(settings: Settings, source: str, options: ImportOptions) -> ImportResult:
    remove_stale_builds(settings.data_dir)
    remove_stale_builds(settings.golden_dir)
    given_range = manifest.parse_score_range(options.score_range)
    tree = open_tree(source, settings.s3_endpoint_url)
    # Images embedded in the labels (Hugging Face parquet) are written here as files, to be checked,
    # staged and quarantined as any photo is; accepted photos are copied to the stage as they are
    # checked, so no photo's bytes stay in memory. Both folders go when the import ends, whatever way.
    embedded = building_dir(settings.data_dir, "embedded")
    stage = building_dir(settings.data_dir, "stage")
    try:
        parsed = parse_source(tree, options, embedded / "source")
        parsed.notes += tree.undecodable_note()
        golden = None
        if options.golden is not None:  # read before data/ changes: a wrong --golden must change nothing
            try:
                golden_tree = open_tree(options.golden, settings.s3_endpoint_url)
                golden_options = ImportOptions(**{**asdict(options), "format": None, "golden": None})
                golden = (golden_tree, parse_source(golden_tree, golden_options, embedded / "golden"))
            except (SourceNotFound, formats.FormatError) as exc:
                raise ImportFailed(f"--golden {options.golden}: {exc}; data/ is unchanged") from None
        return _import(settings, source, options, tree, parsed, given_range, stage, golden)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(embedded, ignore_errors=True)


def _import(
    settings: Settings,
    source: str,
    options: ImportOptions,
    tree: SourceTree,
    parsed: Parsed,
    given_range: tuple[float, float] | None,
    stage: Path,
    golden: tuple[SourceTree, Parsed] | None = None,
) -> ImportResult:
    photos, problems, n_exact = load_photos(tree, parsed, settings, stage)

    this_source = options.source_label or source
    notes = list(parsed.notes) + _conflict_notes(photos)
    existing = _existing(settings)
    if existing is not None and not options.append:
        existing, replaced = _reimport_base(existing, photos, this_source)
        notes += replaced
    frozen = _golden_rows(settings)
    golden_ids = set(frozen)
    foreign = _foreign_golden(settings, options, this_source) if golden_ids else None
    if foreign is not None:
        # The golden set of another dataset (the demo's, say, before your photos): its labels are not
        # this dataset's, and gates judged on it would refuse every model trained here. A new slice
        # of this dataset takes its place below (golden.dvc keeps the old one).
        golden_ids = set()
        notes.append(
            f"the golden set was {foreign}'s; a slice of this dataset replaces it"
            if settings.golden_fraction > 0
            else f"the golden set is {foreign}'s, not this dataset's: give yours with --golden"
        )
    if golden_ids:
        kept = {k: p for k, p in photos.items() if k not in golden_ids}
        if len(kept) < len(photos):
            notes.append(f"{len(photos) - len(kept)} photos are in the golden set and are not trained on")
            if options.golden is None:  # a --golden import replaces it: its own labels are taken
                notes += _golden_relabel_notes(photos, frozen)
        photos = kept

    old_rows = existing[0] if existing else []
    old_spec = existing[1] if existing else None
    if options.append:
        notes += _new_tag_notes(photos, old_rows)
    given = given_range or parsed.score_range
    score_range, range_source, range_notes = _score_range(photos, old_rows, given, old_spec, options.append)
    notes += range_notes
    constant = None if score_range else _constant_score(photos, old_rows)
    if constant is not None:
        # One score for every photo: a score head learns nothing, and its test SROCC of 0 would fail the
        # gates as if the model were bad. The score is left out; without tags the import is refused below.
        old_rows = _without_scores(photos, old_rows)
        notes.append(f"{_constant_note(constant)}; the score is left out and only the tags are trained on")
    if score_range is not None:
        problems += _out_of_range(photos, score_range)
    if parsed.score_name is None and not parsed.has_tags and not old_rows:
        raise ImportFailed(
            f"{source}: found no score and no tags column: name them with --score-column / --tags-column"
        )

    n_total = len(photos) + len(problems)
    bad_fraction = len(problems) / max(n_total, 1)
    if not photos or bad_fraction > settings.max_quarantine_fraction:
        report = write_report(settings, source, parsed.format, problems, notes)
        copy_to_quarantine(settings, tree, problems)
        raise ImportFailed(
            f"import refused: {len(problems)} of {n_total} images or rows are unusable ({bad_fraction:.1%}, "
            f"limit {settings.max_quarantine_fraction:.1%}){_commonest(problems)}; data/ is unchanged. "
            f"Reasons: {report}"
        )

    groups, n_near = assign_groups(photos, old_rows, settings.near_duplicate_distance)
    rows, split_policy = build_rows(photos, groups, old_rows, settings, parsed)
    golden_rows: list[dict[str, str]] = []
    # A slice is set aside on a dataset's first import, and whenever the golden set in place is another
    # dataset's (then from this dataset's rows, old ones included).
    take_golden = (not old_rows and not golden_ids and options.golden is None) or foreign is not None
    synthetic = (options.source_format or parsed.format) == "synthetic"
    if take_golden and not synthetic and settings.golden_fraction > 0:
        rows, golden_rows = set_aside_golden(rows, settings, given=split_policy == "given")
    if split_policy == "group":  # given splits are the user's: a tag missing from train is reported
        rows = ensure_tags_in_train(rows, settings.min_tag_count)
    elif not old_rows:
        if not any(r["split"] == "train" for r in rows):
            # Every image came with the source's own split, and none of them train (a test shard alone).
            held = Counter(r["split"] for r in rows)
            raise ImportFailed(
                "nothing to train on: the source puts every image in a split other than train ("
                + ", ".join(f"{k} {n}" for k, n in sorted(held.items()))
                + "); import its train split too; data/ is unchanged"
            )
        rows, carved = carve_missing_splits(rows, settings)
        notes += carved

    spec = LabelSpec(
        tag_counts=manifest.count_tags(rows),
        min_tag_count=settings.min_tag_count,
        score_name=(parsed.score_name or (old_spec.score_name if old_spec else None))
        if score_range
        else None,
        score_range=score_range,
        score_range_source=range_source,
        split_policy=split_policy,
        source_format=options.source_format or parsed.format,
        source=old_spec.source if old_spec and options.append else this_source,
        appended=_appended(old_spec, this_source, options.append),
        seed=settings.split_seed,
    )
    notes += _spec_notes(spec)
    report = write_report(settings, source, parsed.format, problems, notes)
    if constant is not None and not spec.tags:
        raise ImportFailed(
            f"{_constant_note(constant)}, and no tag is on {spec.min_tag_count} images or more to train "
            "instead; data/ is unchanged"
        )
    if not spec.tags and spec.score_range is None:
        raise ImportFailed(
            f"nothing to train on: no score, and no tag is on {spec.min_tag_count} images or more "
            f"({len(spec.tag_counts)} tags in all); data/ is unchanged. Check how the tags column is "
            f"written ({report})"
        )
    copy_to_quarantine(settings, tree, problems)
    changed = write_dataset(settings.data_dir, rows, spec, stage, settings.data_dir)
    if changed:
        from lightbox.adapters import dvc_repo  # here: the import stage needs dvc only then

        dvc_repo.mark_data_changed(settings)
    if golden_rows:
        golden_spec = LabelSpec(**{**asdict(spec), "tag_counts": manifest.count_tags(golden_rows)})
        write_dataset(settings.golden_dir, golden_rows, golden_spec, stage, None)
    if golden is not None:
        import_golden(settings, options.golden or "", *golden, spec)

    old_ids = {r["image_id"] for r in old_rows}
    counts = Counter(r["split"] for r in rows)
    return ImportResult(
        data_dir=str(settings.data_dir),
        source=this_source,
        format=parsed.format,
        n_images=len(rows),
        n_new=sum(1 for r in rows if r["image_id"] not in old_ids),
        n_quarantined=len(problems),
        changed=changed,
        splits={s: counts.get(s, 0) for s in SPLITS},
        n_golden=len(golden_rows) or len(golden_ids),
        tags=list(spec.tags),
        excluded_tags=list(spec.excluded_tags),
        score_name=spec.score_name,
        score_range=list(score_range) if score_range else None,
        score_range_source=range_source,
        exact_duplicates=n_exact,
        near_duplicate_groups=n_near,
        report=str(report),
        notes=notes,
    )


def _reimport_base(
    existing: tuple[list[dict[str, str]], LabelSpec], photos: Mapping[str, Photo], source: str
) -> tuple[tuple[list[dict[str, str]], LabelSpec] | None, list[str]]:
    """What an import without --append builds on, and a note for the images it drops. The same source
    again keeps each image's split and group (a no-op when nothing changed) and drops the images no
    longer in it; another source replaces the dataset. Refused when the drop would take photos that
    came with --append from other sources: a relabel of the first source must not lose them."""
    rows, spec = existing
    if spec.source != source:
        old = spec.source or "an earlier import"
        return None, [f"the dataset from {old} ({len(rows)} images) is replaced by this import"]
    kept = [r for r in rows if r["image_id"] in photos]
    dropped = len(rows) - len(kept)
    if not dropped:
        return (kept, spec), []
    if spec.appended:
        raise ImportFailed(
            f"data/ also holds images appended from {', '.join(spec.appended)}: importing {source} alone "
            f"would drop {dropped} images that are not in it; give --append to update {source}'s labels "
            "and keep the others, or import into a new project to start over; data/ is unchanged"
        )
    return (kept, spec), [f"{dropped} images no longer in the source were removed from the dataset"]


def _new_tag_notes(photos: Mapping[str, Photo], old_rows: Sequence[Mapping[str, str]]) -> list[str]:
    """An appended batch's tags the dataset did not have: its earlier images were never asked about
    them, so training reads each as a negative example, and the user should know."""
    known = manifest.count_tags(old_rows)
    new = Counter(t for p in photos.values() for t in set(p.tags) if t not in known)
    earlier = sum(1 for r in old_rows if r["image_id"] not in photos)  # those in the batch are relabelled
    if not new or not earlier:
        return []
    listed = ", ".join(f"{t} ({n} images)" for t, n in sorted(new.items()))
    return [
        f"new tags in this batch: {listed}; the {earlier} earlier images were never labelled for them and "
        "count as without them: relabel them or expect a weaker tag"
    ]


def _appended(old_spec: LabelSpec | None, source: str, append: bool) -> tuple[str, ...]:
    """The sources appended to the dataset's first one, this import's included when it is an append of
    another source (an --append of the first source only relabels it)."""
    if old_spec is None:
        return ()
    if append and source not in (old_spec.source, *old_spec.appended):
        return (*old_spec.appended, source)
    return old_spec.appended


def _commonest(problems: list[Problem]) -> str:
    """``, N of them: <a reason>``: the reason most problems share (their values aside), so
    that a file every row of which fails the same way says why in the error's one line."""
    if not problems:
        return ""
    by_kind: dict[str, list[str]] = defaultdict(list)
    for p in problems:
        # Told apart by their kind, not by the values in them: quoted values, paths and numbers aside.
        kind = re.sub(r"\S*[/\\]\S*", "/", re.sub(r"'[^']*'", "''", p.reason))
        by_kind[re.sub(r"\d+", "0", kind)].append(p.reason)
    reasons = max(by_kind.values(), key=len)  # the first of the largest, as Counter.most_common
    return f", {len(reasons)} of them: {reasons[0]}"


def _spec_notes(spec: LabelSpec) -> list[str]:
    notes = []
    if spec.excluded_tags:
        notes.append(
            f"tags on fewer than {spec.min_tag_count} images are left out of training: "
            + ", ".join(f"{t} ({spec.tag_counts[t]})" for t in spec.excluded_tags)
        )
    if spec.score_range and spec.score_range_source == "observed":
        low, high = spec.score_range
        notes.append(f"score range {low:g}..{high:g} is the observed min and max (set it with --score-range)")
    for note in notes:
        log.warning(note)
    return notes


# --- reading the source ---------------------------------------------------------------------------------


def parse_source(tree: SourceTree, options: ImportOptions, embedded: Path) -> Parsed:
    """The source's records, in its (given or detected) format. ``embedded``: a folder of this import's
    own, where images embedded in the labels are written as files."""
    files = tree.files()
    # A labels file's first bytes, read once: detection and the format's reader both look at them (on
    # S3 a head is the whole file).
    head = functools.cache(lambda f: tree.read_head(f, formats.SNIFF_BYTES))
    fmt = options.format or formats.detect(files, source_is_file=tree.single_file is not None, head=head)
    if fmt not in formats.FORMATS:
        raise formats.FormatError(f"unknown format {fmt!r}: one of {', '.join(formats.FORMATS)}")
    columns = Columns(options.score_column, options.tags_column, options.split_column, options.group_column)
    roots = formats.Roots(
        export_dir=tree.root,
        local_files_root=options.local_files_root,
        media_root=options.media_root,
    )
    table = (
        tree.single_file
        if tree.single_file and tree.single_file.lower().endswith(formats.TABLE_SUFFIXES)
        else None
    )
    if table is not None and fmt in ("imagefolder", "labelstudio"):
        data = tree.read(table)
        if fmt == "labelstudio" or formats.is_labelstudio_table(table, data):  # Label Studio's CSV export
            return _finish(formats.parse_labelstudio_table(data, table, roots, columns), None)
    if fmt == "imagefolder":
        if tree.single_file is not None:  # a labels table given as SOURCE: names are relative to it
            below = tree.files_below()
            parsed = formats.parse_imagefolder(
                files,
                tree.read,
                columns,
                metas=[(tree.single_file, None)],
                outside_ok=not tree.is_s3,
                present=below,
            )
            # Its own folder may be anything (a home folder): names are looked for in the folders its rows
            # name and below it (bounded), and only the folders its photos are in are checked for
            # photos no row names.
            files = sorted({*tree.files_beside(r.ref for r in parsed.records), *below})
            return _finish(parsed, files, only_their_folders=True)
        return _finish(formats.parse_imagefolder(files, tree.read, columns), files)
    if fmt == "classfolders":
        return _finish(formats.parse_classfolders(files), None)
    if fmt == "cvat":
        xml = _one(_labels_files(tree, files, fmt, head), "CVAT annotations.xml")
        # Given as SOURCE, the XML's photos are beside it or in images/ below it.
        listed = tree.files_below() if tree.single_file else files
        parsed = formats.parse_cvat(tree.read(xml), xml, listed, columns)
        return _finish(parsed, listed, only_their_folders=tree.single_file is not None)
    if fmt in ("celeba", "ava"):
        what = "CelebA attribute list" if fmt == "celeba" else "AVA.txt"
        name = _one(_labels_files(tree, files, fmt, head), what)
        # Given as SOURCE, the list's photos are found below its folder (CelebA's img_align_celeba/).
        listed = tree.files_below() if tree.single_file else files
        if tree.single_file and not any(is_image_name(f) for f in listed):
            # CelebA's own layout keeps the list in Anno/ beside Img/: its folder holds no photo.
            raise formats.FormatError(
                f"no photo below the folder of {name}: give the dataset's folder (the one that holds "
                "the photos and the list) as SOURCE"
            )
        if fmt == "ava":
            parsed = formats.parse_ava(tree.read(name), name, columns)
        else:
            partition = next((f for f in listed if posixpath.basename(f) == formats.CELEBA_PARTITION), None)
            split_data = tree.read(partition) if partition else None
            parsed = formats.parse_celeba(tree.read(name), name, columns, split_data)
        return _finish(parsed, listed, only_their_folders=tree.single_file is not None)
    if fmt == "parquet":
        shards = [tree.single_file] if tree.single_file else formats.parquet_files(files)
        if not shards:
            raise formats.FormatError(
                "no .parquet file in the source: give the folder of the dataset's shards"
            )
        for shard in shards:  # a clone without its LFS objects holds pointers where the shards belong
            if tree.read_head(shard, len(LFS_POINTER)) == LFS_POINTER:
                raise formats.FormatError(
                    f"{shard} is a Git LFS pointer, not the parquet: run `git lfs pull` in its repository"
                )
        local = tree.local_path
        parsed = formats.parse_parquet(
            shards, lambda f: local(f) or io.BytesIO(tree.read(f)), _store_in(embedded), columns
        )
        return _finish(parsed, None)
    if fmt in _SERVICE_EXPORTS:
        found = _labels_files(tree, files, fmt, head)
        what, parse = _SERVICE_EXPORTS[fmt]
        if not found:
            raise formats.FormatError(
                f"no {what} at the source's top level or one folder down: give the file itself as SOURCE"
            )
        # Given as SOURCE, the file's photos are found below its folder (a bucket synced beside it).
        listed = tree.files_below() if tree.single_file else files
        parsed = parse(tree.read, found, listed, columns)
        parsed = _finish(parsed, listed, only_their_folders=tree.single_file is not None)
        if fmt in _NEVER_DOWNLOADED:
            _refuse_without_photos(parsed, listed, found[0])
        return parsed
    if fmt == "fiftyone":
        found = _labels_files(tree, files, fmt, head)
        if not found:
            raise formats.FormatError(
                "no FiftyOne labels.json or samples.json at the source's top level or one folder down: "
                "give the file itself as SOURCE"
            )
        listed = tree.files_below() if tree.single_file else files
        parsed = formats.parse_fiftyone(tree.read, found, listed, columns)
        return _finish(parsed, listed, only_their_folders=tree.single_file is not None)
    exports = (
        [tree.single_file] if tree.single_file else [f for f in files if "/" not in f and f.endswith(".json")]
    )
    if len(exports) != 1:
        raise formats.FormatError(
            f"expected one Label Studio .json export at the source's top level, found {len(exports)}: "
            "give the export file itself as SOURCE"
        )
    return _finish(formats.parse_labelstudio(tree.read(exports[0]), exports[0], roots, columns), None)


# The labelling services' exports, each found by its content: what the user calls it, and its reader.
_SERVICE_EXPORTS: dict[str, tuple[str, Callable[..., Parsed]]] = {
    "groundtruth": ("SageMaker Ground Truth manifest", formats.parse_groundtruth),
    "vertex": ("Vertex AI import file", formats.parse_vertex),
    "labelbox": ("Labelbox export", formats.parse_labelbox),
    "azureml": ("Azure Machine Learning labels export", formats.parse_azureml),
    "coco": ("COCO file", formats.parse_coco),
}
# Exports whose photos lightbox never fetches (Labelbox's URLs expire; a datastore needs Azure's login):
# why a photo is missing, said beside it in the report.
_NEVER_DOWNLOADED: dict[str, str] = {
    "labelbox": "download the images beside the export: it names them only by URL",
    "azureml": "download the images beside the export: copy the datastore's folder (azcopy)",
}


def _refuse_without_photos(parsed: Parsed, listed: Sequence[str], export: str) -> None:
    """None of the photos an export names is in the source: one line saying to download them, not a
    quarantine holding every row."""
    present = set(listed)
    if parsed.records and not any(r.ref in present or r.ref.startswith("s3://") for r in parsed.records):
        raise formats.FormatError(
            f"none of the {len(parsed.records)} photos {export} names is in the source (the first: "
            f"{parsed.records[0].origin}): {_NEVER_DOWNLOADED[parsed.format]}"
        )


def _store_in(folder: Path) -> Callable[[str, bytes], str]:
    """Where embedded images are kept: ``folder/<name>``, its absolute path the record's ref (which a
    SourceTree reads from the local disk, whatever the source)."""

    def store(name: str, data: bytes) -> str:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    return store


def _labels_files(
    tree: SourceTree, files: Sequence[str], fmt: str, head: Callable[[str], bytes]
) -> list[str]:
    """The labels files of a format told by their content: the file given as SOURCE, else those at the
    source's top level or one folder down."""
    if tree.single_file is not None:
        return [tree.single_file]
    return [f for f in formats.sniffable(files) if formats.sniff(f, head(f)) == fmt]


def _one(found: Sequence[str], what: str) -> str:
    if len(found) != 1:
        listed = f" ({', '.join(found[:5])})" if found else ""
        several = " (the first), then each other with --append" if len(found) > 1 else ""
        raise formats.FormatError(
            f"expected one {what} at the source's top level or one folder down, found {len(found)}{listed}: "
            f"give the file itself as SOURCE{several}"
        )
    return found[0]


def _finish(parsed: Parsed, files: list[str] | None, only_their_folders: bool = False) -> Parsed:
    """Names matched to the disk's, and what the user should know of the labels: images no row names
    (``files``: the source's files, for a labels table; ``only_their_folders``: in the folders that
    hold the table's photos), tags written two ways."""
    if files is not None:
        parsed.records, notes = formats.match_names(parsed.records, files)
        # A row refused for its labels (an AVA photo without votes) is about a photo too: found the same
        # way, so that the quarantine holds its copy and it is not also listed as in no labels file.
        located = [p for p in parsed.problems if p.ref]
        if located:
            found, _ = formats.match_names([Record(ref=p.ref or "", origin=p.origin) for p in located], files)
            for problem, record in zip(located, found, strict=True):
                problem.ref = record.ref
        if parsed.left_out:  # named as the labels write them: found the same way, or listed twice
            found, _ = formats.match_names([Record(ref=ref, origin=ref) for ref in parsed.left_out], files)
            parsed.left_out = [r.ref for r in found]
        if only_their_folders:
            folders = {posixpath.dirname(r.ref) for r in parsed.records}
            files = [f for f in files if posixpath.dirname(f) in folders]
        parsed.notes += notes + formats.unlisted_images(
            parsed.records, parsed.problems, files, parsed.left_out
        )
    parsed.notes += formats.tag_case_notes(parsed.records)
    return parsed


def _inspect(
    tree: SourceTree, record: Record, settings: Settings, stage: Path, fmt: str = ""
) -> tuple[Record, PhotoInfo | None, str]:
    """Read, check and stage one record's photo: (record, info or None, the reason it is unusable)."""
    try:
        data = tree.read(record.ref)
    except SourceNotFound:
        return record, None, f"file is missing: {tree.locate(record.ref)}{_where_hint(record.origin, fmt)}"
    except OSError as exc:
        return record, None, f"cannot read: {exc.strerror or exc}"
    try:
        info = inspect(data, max_pixels=settings.max_pixels, min_side=settings.min_image_side)
    except ImageDecodeError as exc:
        return record, None, str(exc)
    staged = stage / f"{info.image_id}{info.ext}"
    if not staged.exists():  # the same content twice: one copy
        part = staged.with_name(f".{staged.name}.{threading.get_ident()}")
        part.write_bytes(data)
        os.replace(part, staged)
    return record, info, ""


def _where_hint(origin: str, fmt: str = "") -> str:
    """What to give when a Label Studio path was looked for in the default place, or to download."""
    if fmt in _NEVER_DOWNLOADED:
        return f" ({_NEVER_DOWNLOADED[fmt]})"
    if "/data/upload/" in origin:
        return " (give --media-root: Label Studio's media folder, which holds upload/)"
    if "/data/local-files" in origin:
        return " (give --local-files-root: Label Studio's LOCAL_FILES_DOCUMENT_ROOT)"
    if origin.startswith("gs://"):
        return " (lightbox does not read Google Cloud Storage: copy the bucket's images beside the file)"
    return ""


def load_photos(
    tree: SourceTree, parsed: Parsed, settings: Settings, stage: Path
) -> tuple[dict[str, Photo], list[Problem], int]:
    """Read, check and stage every record's photo in threads; merge records of the same content.

    Returns (photos by image id, problems, exact duplicates merged). The accepted bytes are written to
    ``stage`` as they come; decoded pixels are not kept (a camera photo decodes at reduced size for
    the hash).
    """
    problems = list(parsed.problems)
    photos: dict[str, Photo] = {}
    n_exact = 0
    tags_by_folder = parsed.format == "classfolders"  # a photo in two tag folders has both tags
    workers = settings.import_workers or max(1, len(os.sched_getaffinity(0)))
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        progress(total=len(parsed.records), desc="import", unit="img") as bar,
    ):
        for record, info, reason in pool.map(
            lambda r: _inspect(tree, r, settings, stage, parsed.format), parsed.records
        ):
            bar.update()
            if info is None:
                problems.append(Problem(record.origin, reason, record.ref))
                continue
            seen = photos.get(info.image_id)
            if seen is None:
                scores = [] if record.score is None else [record.score]
                photos[info.image_id] = Photo(
                    info,
                    [record.origin],
                    scores,
                    record.tags,
                    record.split,
                    record.group,
                    record.extra,
                    record.ref,
                )
                continue
            n_exact += 1
            _merge(seen, record, tags_by_folder)
    return photos, problems, n_exact


def _merge(photo: Photo, record: Record, tags_by_folder: bool = False) -> None:
    """The same photo under another name: tags are the union (classfolders: one folder per tag), the
    score the mean of the labelled ones, the first given split and group win. Labels that differ are
    kept in ``photo.conflicts`` for the report (tags from folders are no conflict)."""
    differ = []
    if record.score is not None and photo.scores and record.score != photo.scores[0]:
        differ.append(f"score {photo.scores[0]:g} vs {record.score:g}")
    if not tags_by_folder and set(record.tags) != set(photo.tags):
        differ.append(f"tags {_tags_text(photo.tags)} vs {_tags_text(record.tags)}")
    if differ:
        photo.conflicts.append(f"{photo.origins[0]} = {record.origin} ({', '.join(differ)})")
    photo.origins.append(record.origin)
    photo.tags = tuple(sorted(set(photo.tags) | set(record.tags)))
    if record.score is not None:
        photo.scores.append(record.score)
    photo.split = photo.split or record.split
    photo.group = photo.group or record.group


def _tags_text(tags: Sequence[str]) -> str:
    return manifest.tags_to_cell(tags) or "none"


def _conflict_notes(photos: Mapping[str, Photo], shown: int = 3) -> list[str]:
    """One note for the photos that came under several names with labels that differ (merged all the
    same: the mean score, the tags together), with a few of them as examples."""
    conflicts = [p.conflicts[0] for p in photos.values() if p.conflicts]
    if not conflicts:
        return []
    more = ", ..." if len(conflicts) > shown else ""
    return [
        f"{len(conflicts)} photos appear under several names with different labels, merged (mean score, "
        f"tags together): {'; '.join(conflicts[:shown])}{more}"
    ]


def _score_range(
    photos: Mapping[str, Photo],
    old_rows: Sequence[Mapping[str, str]],
    given: tuple[float, float] | None,
    old_spec: LabelSpec | None,
    append: bool = False,
) -> tuple[tuple[float, float] | None, str, list[str]]:
    """The dataset's score scale, its source ("given" or "observed") and notes. The scores of the images
    an import keeps from earlier (an --append's earlier batches) are on the scale they came with, so a
    batch declaring another one is refused: normalised by the new range, an old 5 of 5 would train as
    a 0.5. A scale given once is kept, and said, until another is given."""
    earlier = [r for r in old_rows if r["image_id"] not in photos]  # the rest are relabelled here
    declared = old_spec.score_range if old_spec is not None else None
    if given is not None:
        if append and earlier and declared is not None and given != declared:
            old_scores = _observed_scores({}, earlier)
            if old_spec is not None and old_spec.score_range_source == "given":
                raise ImportFailed(
                    f"this batch's scores are on {_span(given)}, but the dataset declares "
                    f"{_span(declared)} (given when it was imported): give the batch's scores on "
                    f"{_span(declared)}, or re-import the whole dataset with --score-range (without "
                    "--append); data/ is unchanged"
                )
            if old_scores and not given[0] <= min(old_scores) <= max(old_scores) <= given[1]:
                raise ImportFailed(
                    f"this batch's scores are on {_span(given)}, but the dataset's {len(earlier)} earlier "
                    f"images are scored {_span((min(old_scores), max(old_scores)))}: give the batch's "
                    "scores on the earlier images' scale, or re-import the whole dataset with "
                    "--score-range (without --append); data/ is unchanged"
                )
            return (
                given,
                "given",
                [
                    f"scores are now read on {_span(given)}, the earlier images' too (they were scored "
                    f"{_span(declared)}, a range observed, not given): if theirs was another scale, "
                    "re-import them"
                ],
            )
        return given, "given", []
    if old_spec is not None and declared is not None and old_spec.score_range_source == "given":
        return (
            declared,
            "given",
            [
                f"scores read on {_span(declared)}, the range given at an earlier import: give --score-range "
                "to change it"
            ],
        )
    scores = _observed_scores(photos, earlier)
    if not scores or min(scores) == max(scores):
        return None, "observed", []  # one distinct score is no scale (see _constant_score)
    return (min(scores), max(scores)), "observed", []


def _span(score_range: tuple[float, float]) -> str:
    return f"{score_range[0]:g}..{score_range[1]:g}"


def _observed_scores(photos: Mapping[str, Photo], old_rows: Sequence[Mapping[str, str]]) -> list[float]:
    scores = [p.score for p in photos.values() if p.score is not None]
    return scores + [s for s in (manifest.parse_score(r["score"]) for r in old_rows) if s == s]


def _constant_score(photos: Mapping[str, Photo], old_rows: Sequence[Mapping[str, str]]) -> float | None:
    """The one score every labelled photo has, when there are scores and they are all the same."""
    scores = set(_observed_scores(photos, old_rows))
    return scores.pop() if len(scores) == 1 else None


def _constant_note(score: float) -> str:
    return (
        f"every score is {score:g}: a score model learns nothing from it (check the score column, "
        "or give --score-range)"
    )


def _without_scores(
    photos: Mapping[str, Photo], old_rows: Sequence[Mapping[str, str]]
) -> list[dict[str, str]]:
    """Scores cleared from this import's photos (in place) and from the old rows (returned): a dataset
    whose spec declares no score holds none."""
    for p in photos.values():
        p.scores = []
    return [{**r, "score": ""} for r in old_rows]


def _out_of_range(photos: dict[str, Photo], score_range: tuple[float, float]) -> list[Problem]:
    low, high = score_range
    bad = [k for k, p in photos.items() if p.score is not None and not low <= p.score <= high]
    problems = [
        Problem(
            photos[k].origins[0],
            f"score {photos[k].score:g} is outside the range {low:g}..{high:g}",
            photos[k].ref,
        )
        for k in bad
    ]
    for k in bad:
        del photos[k]
    return problems


# --- groups and splits ----------------------------------------------------------------------------------


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def assign_groups(
    photos: Mapping[str, Photo], old_rows: Sequence[Mapping[str, str]], max_distance: int
) -> tuple[dict[str, str], int]:
    """image id -> group. Photos with the same given group, and near duplicates (phash distance <=
    max_distance), are one group; an old row's group is kept and pulls its new near duplicates in.
    Returns (groups, number of groups joined by near duplicates)."""
    ids = [r["image_id"] for r in old_rows] + sorted(photos)
    hashes = [r["phash"] for r in old_rows] + [photos[i].info.phash for i in sorted(photos)]
    given = [r["group"] for r in old_rows] + [photos[i].group or "" for i in sorted(photos)]
    uf = _UnionFind(len(ids))
    first_by_group: dict[str, int] = {}
    for i, g in enumerate(given):
        if g:
            uf.union(first_by_group.setdefault(g, i), i)
    n_near = 0
    for i, j, _ in near_duplicate_pairs(hashes, max_distance):
        if uf.find(i) != uf.find(j):
            n_near += 1
        uf.union(i, j)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(ids)):
        members[uf.find(i)].append(i)
    groups: dict[str, str] = {}
    for idx in members.values():
        # A component keeps an old row's group name, else a given name, else its smallest image id.
        name = next((given[i] for i in idx if i < len(old_rows)), None) or next(
            (given[i] for i in sorted(idx, key=lambda k: ids[k]) if given[i]), None
        )
        name = name or min(ids[i] for i in idx)
        for i in idx:
            groups[ids[i]] = name
    return groups, n_near


def split_of_group(group: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """A stable split for a new group: the same group always lands in the same split, whatever else
    the batch holds (an append never reshuffles)."""
    u = (zlib.crc32(f"{seed}:{group}".encode()) & 0xFFFFFFFF) / 2**32
    cum = np.cumsum(fractions)
    return SPLITS[int(np.searchsorted(cum, u, side="right").clip(0, 2))]


def assign_splits_by_group(
    groups: Sequence[str], seed: int, fractions: tuple[float, float, float]
) -> dict[str, str]:
    """Seeded permutation of the distinct groups, cut by fractions (at least one group in each split
    when there are three or more). Deterministic for the same groups in any order."""
    from lightbox.dataset import assign_splits

    return assign_splits(sorted(set(groups)), seed, fractions)


def build_rows(
    photos: Mapping[str, Photo],
    groups: Mapping[str, str],
    old_rows: Sequence[Mapping[str, str]],
    settings: Settings,
    parsed: Parsed,
) -> tuple[list[dict[str, str]], str]:
    """Manifest rows: old rows keep their split (and take new labels when relabelled), new photos get
    the source's split, else their group's split, else one assigned by group."""
    val, test = settings.split_validation_fraction, settings.split_test_fraction
    fractions = (1.0 - val - test, val, test)
    given = any(p.split for p in photos.values())
    old = {r["image_id"]: dict(r) for r in old_rows}
    split_of: dict[str, str] = {}
    for r in old_rows:
        split_of.setdefault(groups[r["image_id"]], r["split"])
    new_groups = sorted({groups[k] for k in photos if k not in old} - set(split_of))
    if given:
        policy = "given"
        for k, p in photos.items():
            if p.split and k not in old:
                split_of.setdefault(groups[k], p.split)
    else:
        policy = "group"
    pending = [g for g in new_groups if g not in split_of]
    if pending:
        if old_rows:
            split_of |= {g: split_of_group(g, settings.split_seed, fractions) for g in pending}
        else:
            split_of |= assign_splits_by_group(pending, settings.split_seed, fractions)
    rows: list[dict[str, str]] = []
    for image_id, r in old.items():
        again = photos.get(image_id)
        if again is not None:  # in this batch too: its labels are the newest word (a relabel)
            r |= _labels(again, r["split"])
        rows.append(r)
    for image_id, p in photos.items():
        if image_id in old:
            continue
        split = p.split if (given and p.split) else split_of[groups[image_id]]
        rows.append(_row(p, split, groups[image_id]))
    return sorted(rows, key=lambda r: r["image_id"]), policy


def _labels(p: Photo, split: str) -> dict[str, str]:
    return {
        "score": manifest.format_score(p.score),
        "tags": manifest.tags_to_cell(p.tags),
        "split": split,
    }


def _row(p: Photo, split: str, group: str) -> dict[str, str]:
    return {
        "image_id": p.info.image_id,
        "path": f"{IMAGES_SUBDIR}/{p.info.image_id}{p.info.ext}",
        "group": group,
        "width": str(p.info.width),
        "height": str(p.info.height),
        "phash": p.info.phash,
        "original": p.origins[0],
        **_labels(p, split),
        **p.extra,
    }


def carve_missing_splits(
    rows: list[dict[str, str]], settings: Settings
) -> tuple[list[dict[str, str]], list[str]]:
    """Given splits without a validation or a test split (many Hugging Face datasets ship train and
    test only, or train alone): the missing ones are carved from train, by group and seeded, at the
    configured fractions, so that training can stop early and the gates have a test split. The rows the
    user put in validation or test stay there. Returns the rows and a note per carved split."""
    present = {r["split"] for r in rows}
    missing = [s for s in ("validation", "test") if s not in present]
    groups = sorted({r["group"] for r in rows if r["split"] == "train"})
    if not missing or len(groups) < 1 + len(missing):
        return rows, []
    fraction = {"validation": settings.split_validation_fraction, "test": settings.split_test_fraction}
    order = [groups[i] for i in np.random.default_rng(settings.split_seed).permutation(len(groups))]
    moved: dict[str, str] = {}
    missing = [s for s in missing if fraction[s] > 0]  # a fraction set to 0: that split is not wanted
    for split in missing:
        take = min(max(1, round(fraction[split] * len(groups))), len(order) - 1)
        moved |= dict.fromkeys(order[:take], split)
        order = order[take:]
    out = [
        {**r, "split": moved[r["group"]]} if r["split"] == "train" and r["group"] in moved else r
        for r in rows
    ]
    notes = []
    for split in missing:
        n = sum(1 for r in out if r["split"] == split)
        notes.append(
            f"no {split} split was given: {n} images ({sum(1 for g in moved.values() if g == split)} groups) "
            f"of train set aside as {split}, by group (LIGHTBOX_SPLIT_{split.upper()}_FRACTION)"
        )
    return out, notes


def set_aside_golden(
    rows: list[dict[str, str]], settings: Settings, given: bool = True
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Move a seeded share of whole groups to the golden split. Given splits keep train intact: the
    golden groups come from test, else validation. Splits lightbox assigned (``given`` False) give
    their share each, so that test keeps its fraction of what is trained and judged (taken from test
    alone, a 15% test split shrank to 5%). A group is skipped when it would take the last training
    examples of a tag, or (splits lightbox assigned) the last group of its split."""
    by_group: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_group[r["group"]].append(r)
    every = ("validation", "test", "train")
    pool_splits = ("test",) if given and any(r["split"] == "test" for r in rows) else every
    candidates = sorted(g for g, rs in by_group.items() if all(r["split"] in pool_splits for r in rs))
    if not candidates:
        candidates = sorted(by_group)
    order = [
        candidates[i] for i in np.random.default_rng(settings.split_seed + 1).permutation(len(candidates))
    ]
    target = max(1, round(settings.golden_fraction * len(rows)))
    remaining = Counter(t for r in rows for t in manifest.cell_to_tags(r["tags"]))
    groups_in = Counter(by_group[g][0]["split"] for g in by_group)
    taken: set[str] = set()
    n = 0
    for g in order:
        if n >= target or len(by_group) - len(taken) <= 3:
            break
        tags = Counter(t for r in by_group[g] for t in manifest.cell_to_tags(r["tags"]))
        if (not given and groups_in[by_group[g][0]["split"]] <= 1) or any(
            remaining[t] - c < settings.min_tag_count and remaining[t] >= settings.min_tag_count
            for t, c in tags.items()
        ):
            continue
        groups_in[by_group[g][0]["split"]] -= 1
        taken.add(g)
        remaining -= tags
        n += len(by_group[g])
    golden = [r | {"split": GOLDEN_SPLIT} for r in rows if r["group"] in taken]
    return [r for r in rows if r["group"] not in taken], golden


def ensure_tags_in_train(rows: list[dict[str, str]], min_count: int) -> list[dict[str, str]]:
    """Every tag that will be trained on (>= min_count images) gets examples in train: for a tag with
    none, the smallest group holding it moves to train (groups stay whole)."""
    counts = Counter(t for r in rows for t in manifest.cell_to_tags(r["tags"]))
    in_train = {t for r in rows if r["split"] == "train" for t in manifest.cell_to_tags(r["tags"])}
    missing = sorted(t for t, n in counts.items() if n >= min_count and t not in in_train)
    if not missing:
        return rows
    by_group: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by_group[r["group"]].append(r)
    moved: set[str] = set()
    for tag in missing:
        holders = sorted(
            (g for g, rs in by_group.items() if any(tag in manifest.cell_to_tags(r["tags"]) for r in rs)),
            key=lambda g: (len(by_group[g]), g),
        )
        if holders and not moved.intersection(holders):
            moved.add(holders[0])
    out = [r | {"split": "train"} if r["group"] in moved else r for r in rows]
    return _refill_emptied_splits(rows, out, moved)


def _refill_emptied_splits(
    before: list[dict[str, str]], after: list[dict[str, str]], moved: set[str]
) -> list[dict[str, str]]:
    """A split that the moves to train emptied (a small dataset's only validation group held a rare tag:
    training then refused for want of a validation split) takes the smallest train group in exchange,
    one whose tags all have other train examples."""
    emptied = sorted({r["split"] for r in before} - {r["split"] for r in after})
    for split in emptied:
        train = [r for r in after if r["split"] == "train"]
        groups: dict[str, list[dict[str, str]]] = defaultdict(list)
        for r in train:
            groups[r["group"]].append(r)
        for group in sorted((g for g in groups if g not in moved), key=lambda g: (len(groups[g]), g)):
            rest = {t for r in train if r["group"] != group for t in manifest.cell_to_tags(r["tags"])}
            if all(t in rest for r in groups[group] for t in manifest.cell_to_tags(r["tags"])):
                after = [r | {"split": split} if r["group"] == group else r for r in after]
                break
    return after


# --- writing --------------------------------------------------------------------------------------------


def remove_stale_builds(target: Path) -> None:
    """Half-built folders a killed import left beside ``target`` (their process is gone). A folder of
    this very process is from an earlier call that was abandoned: it goes too."""
    for folder, _ in stale_builds(target, alive=lambda pid: pid != os.getpid() and process_alive(pid)):
        shutil.rmtree(folder, ignore_errors=True)


def stale_builds(target: Path, *, alive: Callable[[int], bool] = process_alive) -> list[tuple[Path, str]]:
    """Half-built ``.<target>.building-<pid>-*`` folders beside ``target`` whose process is gone."""
    if not target.parent.is_dir():
        return []
    found = []
    for folder in sorted(target.parent.glob(f".{target.name}.building-*")):
        pid = folder.name.split(".building-", 1)[1].split("-", 1)[0]
        if not pid.isdigit():  # named before builders recorded their pid
            found.append((folder, "half-built by a process that did not record its id"))
        elif not alive(int(pid)):
            found.append((folder, f"half-built by process {pid}, which is gone"))
    return found


def building_dir(target: Path, kind: str = "build") -> Path:
    """A fresh folder beside ``target``; the pid in its name lets the next run tell an abandoned build
    from a running one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.building-{os.getpid()}-{kind}-", dir=target.parent))


def write_dataset(
    target: Path,
    rows: Sequence[Mapping[str, str]],
    spec: LabelSpec,
    staged: Path,
    previous: Path | None,
) -> bool:
    """Build the folder beside ``target`` and swap it in; False (nothing written) when the manifest and
    the label spec are byte-identical to what is there (images are content-addressed). Each image comes
    from ``staged`` (this import's photos) or, when the dataset had it, from ``previous``."""
    tmp = building_dir(target)
    try:
        (tmp / IMAGES_SUBDIR).mkdir()
        manifest.write_manifest(tmp, list(rows))
        manifest.write_label_spec(tmp, spec)
        if _same(tmp, target, rows):
            shutil.rmtree(tmp)
            return False
        for r in progress(rows, desc=f"write {target.name}", unit="img", disable=len(rows) < 500):
            name = Path(r["path"]).name
            if (staged / name).is_file():
                _link_or_copy(staged / name, tmp / r["path"])
            elif previous is not None and (previous / r["path"]).is_file():
                _link_or_copy(previous / r["path"], tmp / r["path"])
            else:
                raise ImportFailed(
                    f"{r['image_id']} is in the dataset but its file {previous}/{r['path']} is gone"
                )
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the swapped-in folder should look like any other
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _same(new: Path, old: Path, rows: Sequence[Mapping[str, str]]) -> bool:
    for name in (manifest.MANIFEST_NAME, manifest.LABELS_NAME):
        if not (old / name).is_file() or (old / name).read_bytes() != (new / name).read_bytes():
            return False
    return all((old / r["path"]).is_file() for r in rows)


def _link_or_copy(src: Path, dest: Path) -> None:
    # A hard link makes an append cost O(new images); the old folder is removed after the swap.
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def swap_in(tmp: Path, target: Path) -> None:
    # Two renames (POSIX has no portable directory swap): between them the target is briefly absent,
    # but a crash there leaves the complete old copy at `.<name>.old-<pid>`, never a partial dataset.
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _existing(settings: Settings) -> tuple[list[dict[str, str]], LabelSpec] | None:
    if not (settings.data_dir / manifest.MANIFEST_NAME).is_file():
        return None
    return manifest.read_manifest(settings.data_dir), manifest.read_label_spec(settings.data_dir)


def _foreign_golden(settings: Settings, options: ImportOptions, source: str) -> str | None:
    """The source of the golden set in place when it belongs to another dataset than the one this
    import writes (another source replacing the dataset, without --golden), else None."""
    if options.append or options.golden is not None or options.source_format == "synthetic":
        return None
    try:
        golden_source = manifest.read_label_spec(settings.golden_dir).source
    except (OSError, ManifestError, ValueError):
        return None  # no label spec to tell: keep it, as before
    return None if golden_source in ("", source) else golden_source


def _golden_rows(settings: Settings) -> dict[str, dict[str, str]]:
    """The golden set's rows by image id (none when there is no golden set)."""
    if not (settings.golden_dir / manifest.MANIFEST_NAME).is_file():
        return {}
    return {r["image_id"]: r for r in manifest.read_manifest(settings.golden_dir)}


def _golden_relabel_notes(photos: Mapping[str, Photo], golden: Mapping[str, Mapping[str, str]]) -> list[str]:
    """A note when golden photos come with other labels than the frozen golden set's: they are not
    applied (every model is judged on the same labels), and the user should know how to take them."""
    n = sum(1 for k, p in photos.items() if k in golden and _relabelled(p, golden[k]))
    if not n:
        return []
    return [
        f"labels of {n} golden photos differ from the frozen golden set and were not applied (the golden "
        "set is frozen: to take them, replace it on purpose with `lightbox data import SOURCE --golden "
        "GOLDEN_SOURCE`, GOLDEN_SOURCE holding the golden photos with their new labels; `lightbox golden "
        "--rebuild` re-renders only the demo's)"
    ]


def _relabelled(photo: Photo, row: Mapping[str, str]) -> bool:
    """Whether a photo's labels differ from its row's (a score only where both have one)."""
    score = manifest.format_score(photo.score)
    score_differs = bool(score and row["score"]) and score != row["score"]
    return score_differs or manifest.tags_to_cell(photo.tags) != row["tags"]


def import_golden(settings: Settings, source: str, tree: SourceTree, parsed: Parsed, spec: LabelSpec) -> int:
    """A user-supplied golden set (any import format, parsed before data/ changed), on the dataset's
    label spec."""
    stage = building_dir(settings.golden_dir, "stage")
    try:
        photos, problems, _ = load_photos(tree, parsed, settings, stage)
        if spec.score_range is not None:
            problems += _out_of_range(photos, spec.score_range)
        if problems:
            log.warning("golden set %s: %d unusable rows or images left out", source, len(problems))
        rows = [_row(p, GOLDEN_SPLIT, p.group or k) for k, p in sorted(photos.items())]
        golden_spec = LabelSpec(**{**asdict(spec), "tag_counts": manifest.count_tags(rows)})
        write_dataset(settings.golden_dir, rows, golden_spec, stage, None)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return len(rows)


# --- report and quarantine ------------------------------------------------------------------------------


def write_report(
    settings: Settings, source: str, fmt: str, problems: Sequence[Problem], notes: Sequence[str]
) -> Path:
    """``<reports_dir>/import.json`` and ``.md``: every unusable image or row by name, with the reason."""
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "source": source,
        "format": fmt,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "problems": [{"origin": p.origin, "reason": p.reason} for p in problems],
        "notes": list(notes),
    }
    (settings.reports_dir / f"{REPORT_NAME}.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    lines = [f"# Import report: {source} ({fmt})", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", f"## Quarantined ({len(problems)})", ""]
    lines += ["| image or row | reason |", "|---|---|"] if problems else ["None."]
    lines += [f"| {_cell(p.origin)} | {_cell(p.reason)} |" for p in problems]
    path = settings.reports_dir / f"{REPORT_NAME}.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cell(text: str) -> str:
    """Text in a Markdown table cell, shown as it is (a reason may quote a '|')."""
    return text.replace("\\", "\\\\").replace("|", "\\|")


def read_report(settings: Settings) -> dict | None:
    path = settings.reports_dir / f"{REPORT_NAME}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def copy_to_quarantine(settings: Settings, tree: SourceTree, problems: Sequence[Problem]) -> Path | None:
    """Copies of the unusable files that exist (the user's originals stay where they are) and a CSV of
    every problem, in a fresh timestamped folder."""
    if not problems:
        return None
    target = settings.quarantine_dir / datetime.now(UTC).strftime("import-%Y%m%dT%H%M%S%fZ")
    target.mkdir(parents=True, exist_ok=False)
    rows = []
    for i, p in enumerate(problems):
        rows.append({"origin": p.origin, "reason": p.reason})
        if p.ref is None:  # a row, not a file
            continue
        try:
            data = tree.read(p.ref)
        except (OSError, ValueError):
            continue
        (target / f"{i:05d}-{Path(p.ref).name}").write_bytes(data)
    manifest.write_csv(target / "quarantined.csv", ("origin", "reason"), rows)
    return target
