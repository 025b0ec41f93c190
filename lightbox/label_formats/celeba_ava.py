"""Attribute lists and vote counts: CelebA's ``list_attr_celeba.txt`` and AVA's ``AVA.txt``."""

from __future__ import annotations

import posixpath

from lightbox.label_formats.records import Columns, FormatError, Parsed, Problem, Record, _only_columns
from lightbox.label_formats.tables import _decode_text, _one_hot_tags

_FLAG_VALUES = frozenset({"-1", "0", "1"})
CELEBA_PARTITION = "list_eval_partition.txt"  # CelebA's own train (0) / validation (1) / test (2) split
_CELEBA_SPLITS = {"0": "train", "1": "validation", "2": "test"}
AVA_SCALE = (1.0, 10.0)  # AVA's votes are for the scores 1..10


def _sniff_text(head: bytes, complete: bool) -> str | None:
    """``celeba`` for an attribute list (a count, a line of attribute names, then ``name -1 1 ...``),
    ``ava`` for AVA's vote counts (15 integers a line), None for anything else. ``complete``: the head is
    the whole file (else its last line may be cut)."""
    lines = [line.split() for line in head.decode("utf-8", "replace").splitlines()]
    lines = [t for t in (lines if complete else lines[:-1]) if t][:20]
    if len(lines) >= 3 and len(lines[0]) == 1 and lines[0][0].isdigit():
        names = lines[1]
        # Most rows, not all: a bad row is that row's problem, not a reason to miss the format.
        flags = [len(r) == len(names) + 1 and set(r[1:]) <= _FLAG_VALUES for r in lines[2:]]
        if not any(_is_int(n) for n in names) and 5 * sum(flags) >= 4 * len(flags):
            return "celeba"
    if lines and all(len(t) == 15 and all(v.isdigit() for v in t) for t in lines):
        return "ava"
    return None


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def parse_celeba(data: bytes, name: str, columns: Columns, partition: bytes | None = None) -> Parsed:
    """CelebA's ``list_attr_celeba.txt`` (or any list in its layout): a count, a line of attribute names,
    then a photo's name and one -1/1 flag per attribute; a photo's tags are the attributes it has (those
    named by ``--tags-column A,B,...``, when given). ``partition``: CelebA's ``list_eval_partition.txt``
    (``name 0|1|2``), the splits, when given."""
    _only_columns(name, columns, ("tags",), "the attributes are the tags")
    text, notes = _decode_text(name, data)
    lines = text.splitlines()
    names = lines[1].split() if len(lines) > 1 else []
    if not lines or not lines[0].strip().isdigit() or not names:
        raise FormatError(f"{name} is not an attribute list: expected a count, then the attribute names")
    kept = [n.strip() for n in columns.tags.split(",") if n.strip()] if columns.tags else names
    missing = [n for n in kept if n not in names]
    if missing:
        raise FormatError(
            f"{name}: no attribute {missing[0]!r} for --tags-column (attributes: {' '.join(names)})"
        )
    splits = _celeba_splits(partition) if partition is not None else {}
    base = posixpath.dirname(name)
    records: list[Record] = []
    problems: list[Problem] = []
    for at, line in enumerate(lines[2:], start=3):
        values = line.split()
        if not values:
            continue
        origin = f"{name}:{at}"
        if len(values) != len(names) + 1:
            problems.append(
                Problem(origin, f"line {at} has {len(values) - 1} flags, the header {len(names)}")
            )
            continue
        ref = posixpath.join(base, values[0])
        try:
            tags = _one_hot_tags(dict(zip(names, values[1:], strict=True)), kept)
        except ValueError as exc:
            problems.append(Problem(ref, str(exc), ref))
            continue
        records.append(Record(ref=ref, origin=ref, tags=tags, split=splits.get(values[0])))
    declared = int(lines[0])
    if declared != len(records) + len(problems):
        notes.append(f"{name} declares {declared} photos and lists {len(records) + len(problems)}")
    shown = ", ".join(kept[:8]) + (f" and {len(kept) - 8} more" if len(kept) > 8 else "")
    notes.append(
        f"tags from {len(kept)} attributes ({shown}): a photo has those marked 1"
        + ("" if columns.tags else " (keep some with --tags-column A,B,...)")
    )
    if splits:
        notes.append(f"splits from {CELEBA_PARTITION} (CelebA's own train, validation and test)")
    return Parsed("celeba", records, problems, notes, has_tags=True)


def _celeba_splits(partition: bytes) -> dict[str, str]:
    """Photo name -> split, from ``list_eval_partition.txt``; FormatError when it is not that file."""
    splits = {}
    for line in partition.decode("utf-8", "replace").splitlines():
        values = line.split()
        if values and (len(values) != 2 or values[1] not in _CELEBA_SPLITS):
            raise FormatError(
                f"{CELEBA_PARTITION}: {line.strip()[:60]!r} is not 'name 0|1|2': fix or remove it"
            )
        if values:
            splits[values[0]] = _CELEBA_SPLITS[values[1]]
    return splits


def parse_ava(data: bytes, name: str, columns: Columns) -> Parsed:
    """AVA's ``AVA.txt``: on each line an index, the image id, the votes for the scores 1 to 10, two
    semantic tag ids and the challenge id; the photo is ``<image id>.jpg``. Its score is the mean vote,
    on AVA's 1..10 scale. The semantic tags are left out: most photos have fewer than two, so a photo
    without a tag is no example of its absence."""
    _only_columns(name, columns, (), "the score is the mean vote")
    text, notes = _decode_text(name, data)
    base = posixpath.dirname(name)
    records: list[Record] = []
    problems: list[Problem] = []
    for at, line in enumerate(text.splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        if len(values) != 15 or not all(v.isdigit() for v in values):
            problems.append(
                Problem(
                    f"{name}:{at}",
                    f"line {at} is not index, image id, 10 vote counts, 2 tag ids and a challenge id",
                )
            )
            continue
        ref = posixpath.join(base, f"{values[1]}.jpg")
        votes = [int(v) for v in values[2:12]]
        if not sum(votes):
            problems.append(Problem(ref, "no votes", ref))
            continue
        mean = sum(score * n for score, n in enumerate(votes, start=1)) / sum(votes)
        records.append(Record(ref=ref, origin=ref, score=mean))
    notes.append(
        "the score is each photo's mean vote on AVA's 1..10 scale; its semantic tag and challenge ids "
        "are not read"
    )
    return Parsed("ava", records, problems, notes, score_name="mean_vote", score_range=AVA_SCALE)
