"""After parsing: the records' file names matched to the names the disk has, and what the labels leave out."""

from __future__ import annotations

import posixpath
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence

from lightbox.imaging import is_image_name
from lightbox.label_formats.records import Problem, Record


def _name_key(path: str) -> str:
    return unicodedata.normalize("NFC", path.replace("\\", "/")).casefold()


def match_names(records: list[Record], files: Sequence[str]) -> tuple[list[Record], list[str]]:
    """Records whose file is not in ``files`` by its exact name, matched again when exactly one file
    matches: ignoring case, Unicode normalization (macOS writes names decomposed) and backslashes;
    then a name without its extension (Kaggle's ids); then the same name in another folder (a table
    beside its photos' folder, as KonIQ and Kaggle ship). And the notes saying how many. Names that
    match nothing stay as they are (reported missing)."""
    exact = set(files)
    index: dict[str, list[str]] = defaultdict(list)
    stems: dict[str, list[str]] = defaultdict(list)  # images by their name without the extension
    bases: dict[str, list[str]] = defaultdict(list)  # images by their file name alone, any folder
    for f in files:
        index[_name_key(f)].append(f)
        if is_image_name(f):
            stems[_name_key(posixpath.splitext(f)[0])].append(f)
            base = posixpath.basename(f)
            bases[_name_key(base)].append(f)
            bases[_name_key(posixpath.splitext(base)[0])].append(f)
    named = {r.ref for r in records}
    # A folder of photos of its own: a name missing there is missing, not a photo of the same name in
    # another folder (cameras repeat IMG_0001.JPG in every folder).
    photo_folders = {posixpath.dirname(f) for f in files if is_image_name(f)}
    out, ambiguous = [], []
    counts: Counter[str] = Counter()
    moved: Counter[str] = Counter()  # the folders names were found in
    for r in records:
        if r.ref not in exact:
            found, how = index.get(_name_key(r.ref), []), "case"
            if not found and not is_image_name(r.ref):
                found, how = stems.get(_name_key(r.ref), []), "stem"
            if not found and posixpath.dirname(r.ref) not in photo_folders:
                found = [f for f in bases.get(_name_key(posixpath.basename(r.ref)), []) if f not in named]
                how = "folder"
            if len(found) == 1:
                r = Record(**{**r.__dict__, "ref": found[0]})
                counts[how] += 1
                if how == "folder":
                    moved[posixpath.dirname(found[0]) + "/"] += 1
            elif found:
                ambiguous.append(f"{r.ref} ({', '.join(sorted(found))})")
        out.append(r)
    notes = []
    if counts["case"]:
        notes.append(f"{counts['case']} file names matched the disk's only when case or accents were ignored")
    if counts["stem"]:
        notes.append(f"{counts['stem']} names without an extension matched the one image of that name")
    if counts["folder"]:
        where = ", ".join(f"{d} ({n})" for d, n in moved.most_common(3))
        notes.append(
            f"{counts['folder']} names were found in another folder, the only image of that name: {where}"
        )
    if ambiguous:
        notes.append(
            "names that match several files (differing in case, extension or folder), left unmatched: "
            + "; ".join(ambiguous[:5])
        )
    return out, notes


def unlisted_images(
    records: Sequence[Record], problems: Sequence[Problem], files: Sequence[str], left_out: Sequence[str] = ()
) -> list[str]:
    """Images in the source that no row names: a note, so that none is left out silently (``left_out``:
    those the labels name and leave out, said in a note of their own)."""
    named = {r.ref for r in records} | {p.ref for p in problems if p.ref} | {p.origin for p in problems}
    named |= set(left_out)
    left = sorted(f for f in files if is_image_name(f) and f not in named)
    if not left:
        return []
    shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
    return [f"{len(left)} images in the source are in no labels file and were left out: {shown}"]


def tag_case_notes(records: Sequence[Record]) -> list[str]:
    """Tags that differ only in case or spacing are kept apart (they are the user's vocabulary), and
    said, since they are almost always one tag written two ways."""
    spellings: dict[str, set[str]] = defaultdict(set)
    for r in records:
        for t in r.tags:
            spellings[" ".join(t.split()).casefold()].add(t)
    twins = [" / ".join(sorted(v)) for v in spellings.values() if len(v) > 1]
    if not twins:
        return []
    return [f"tags that differ only in case or spacing, kept apart: {'; '.join(sorted(twins)[:10])}"]
