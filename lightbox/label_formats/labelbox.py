"""Labelbox exports of an image project: export v2 (NDJSON, one data row a line: ``data_row``
{``row_data``, ``global_key``, ``external_id``}, ``projects`` {<id>: {``labels``: [{``annotations``:
{``classifications``, ``objects``}, ``performance_details`` {``skipped``}, ...}]}}), the SDK's JSON list
of the same rows, and the older export v1 (a JSON list, one object a label: ``Labeled Data``,
``External ID``, ``Label`` {``classifications``: [{``title``, ``answer`` | ``answers``}], ``objects``},
``Skipped``).

A photo's tags are the options chosen in its classification questions (radio, checklist, dropdown;
nested questions too): every question's, or those ``--tags-column Q1,Q2`` names. ``--score-column``
names a question whose answer (a text, or an option's name) is a number. Objects (boxes, polygons...)
label a region, not the photo: only counted. Several labels of a row in one project (consensus) vote as
Label Studio's annotators do; a row labelled in several projects takes each question's answer from the
latest project that asked it. Skipped and unlabelled rows are left out and counted.

The photos are found in the source by the longest ending of their URL, else of their global key or
external id (the file names they were uploaded under); Labelbox's own URLs expire, so they are never
downloaded.
"""

from __future__ import annotations

import functools
import json
import posixpath
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from lightbox.label_formats.cloud import _json_lines, _text
from lightbox.label_formats.labelstudio import _aggregate, _Vote
from lightbox.label_formats.records import (
    Columns,
    FormatError,
    Parsed,
    Problem,
    Record,
    _no_separator,
    _only_columns,
    named_in,
    parse_score_cell,
)
from lightbox.label_formats.uris import locate

# An export's first bytes (sniffed by lightbox.label_formats.detection): a v2 row, alone on its line or
# in a JSON list (json.dump of the SDK's result, maybe indented), or a v1 label.
LABELBOX_HEAD = re.compile(rb'\s*\[?\s*\{.{0,4096}?"(?:data_row"\s*:\s*\{|Labeled Data"\s*:)', re.S)


@dataclass(frozen=True)
class _Answer:
    """One question answered in a label: the options chosen, or a text; ``within``: the questions it is
    nested under."""

    question: str
    options: tuple[str, ...] = ()
    text: str | None = None
    within: tuple[str, ...] = ()


@dataclass
class _Label:
    project: str
    when: str  # ISO timestamp: the latest project answers a question
    answers: list[_Answer]
    objects: int


@dataclass
class _Row:
    origin: str  # how the user knows the photo
    names: list[str]  # where its photo may be: the URL, the global key, the external id
    labels: list[_Label] = field(default_factory=list)
    skipped: int = 0


@dataclass
class _Seen:
    """What the whole export holds, for the refusals and the notes."""

    choices: set[str] = field(default_factory=set)  # questions answered with options
    texts: set[str] = field(default_factory=set)  # questions answered with a text
    objects: int = 0
    voted: int = 0  # rows with several labels in one project
    projects: int = 0  # rows labelled in several projects
    skipped: int = 0
    unlabelled: int = 0
    empty: int = 0  # rows whose labels answer no question read here


def parse_labelbox(
    read: Callable[[str], bytes], exports: Sequence[str], files: Collection[str], columns: Columns
) -> Parsed:
    """Labelbox export files (v2 NDJSON or JSON, v1 JSON) -> one record per labelled data row, its photo
    found in ``files`` (the source's). ``--tags-column Q1,Q2`` names the questions read as tags (default:
    every radio, checklist and dropdown question), ``--score-column`` the question answered by a number."""
    _only_columns(exports[0], columns, ("tags", "score"), "a Labelbox export's labels are its questions")
    wanted = named_in(columns.tags)
    out = Parsed("labelbox", [], score_name=columns.score)
    present = frozenset(files)
    seen = _Seen()
    rows: list[tuple[str, _Row]] = []
    for name in exports:
        rows += _rows(read(name), name, out)
    if not rows and not out.problems:
        raise FormatError(f"{exports[0]} holds no data row: it is not a Labelbox export")
    for _, r in rows:
        for lab in r.labels:
            seen.objects += lab.objects
            for a in lab.answers:
                (seen.choices if a.text is None else seen.texts).add(a.question)
    _refuse_unknown(exports[0], seen, wanted, columns.score)
    scored = 0
    for export, r in rows:
        try:
            ref = locate(r.names, posixpath.dirname(export), present)
            tags, score = _labels_of(r, wanted, columns.score, seen)
        except ValueError as exc:
            out.problems.append(Problem(r.origin, str(exc)))
            continue
        if not tags and score is None:
            out.left_out.append(ref)
            _count_left_out(r, seen)
            continue
        scored += score is not None
        out.records.append(Record(ref=ref, origin=r.origin, score=score, tags=tags))
    out.has_tags = bool(seen.choices - {columns.score})
    _refuse_or_note(exports[0], len(rows), seen, wanted, columns.score, scored, out)
    return out


# --- reading the rows ---------------------------------------------------------------------------------------


def _rows(data: bytes, name: str, out: Parsed) -> list[tuple[str, _Row]]:
    """(export file, row) of an export file: NDJSON, or a JSON list (the SDK's rows, or v1's labels), or one
    v1 label object. Lines and items that are not a data row are problems."""
    try:
        whole = json.loads(_text(data, name))
    except json.JSONDecodeError:  # NDJSON: "Extra data" after the first line
        items: Iterator[tuple[str, object]] = _json_lines(data, name, out)  # problems in line order
    else:
        listed = whole if isinstance(whole, list) else [whole]
        items = ((f"{name} row {i}", item) for i, item in enumerate(listed, 1))
    rows: list[tuple[str, _Row]] = []
    v1: dict[str, _Row] = {}  # export v1 writes one object per label: a data row's labels gathered
    foreign = 0
    for origin, item in items:
        if isinstance(item, Mapping) and isinstance(item.get("data_row"), Mapping):
            row = _v2_row(item)
            if row is None:
                out.problems.append(Problem(origin, "no row_data in data_row"))
            else:
                rows.append((name, row))
        elif isinstance(item, Mapping) and "Labeled Data" in item:
            _add_v1_label(item, name, v1, rows)
        else:
            foreign += 1
            out.problems.append(Problem(origin, "not a Labelbox data row (no data_row or Labeled Data)"))
    if foreign and not rows:
        raise FormatError(
            f"{name} is not a Labelbox export: no data_row (export v2) or Labeled Data (export v1) in it"
        )
    return rows


def _names(*values: object) -> list[str]:
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def _origin(names: Sequence[str], url: str) -> str:
    # The name the photo was uploaded under, else its URL without a signed URL's query (no name of it).
    return names[0] if names else url.split("?", 1)[0]


def _v2_row(item: Mapping) -> _Row | None:
    data_row = item["data_row"]
    url = data_row.get("row_data")
    if not isinstance(url, str) or not url.strip():
        return None
    given = _names(data_row.get("external_id"), data_row.get("global_key"))
    row = _Row(
        origin=_origin(given, url), names=_names(url, data_row.get("global_key"), data_row.get("external_id"))
    )
    projects = item.get("projects")
    for project_id, project in (projects or {}).items() if isinstance(projects, Mapping) else ():
        for lab in (project.get("labels") or []) if isinstance(project, Mapping) else ():
            if not isinstance(lab, Mapping):
                continue
            performance = lab.get("performance_details")
            if isinstance(performance, Mapping) and performance.get("skipped") is True:
                row.skipped += 1
                continue
            annotations = lab.get("annotations")
            annotations = annotations if isinstance(annotations, Mapping) else {}
            details = lab.get("label_details")
            details = details if isinstance(details, Mapping) else {}
            row.labels.append(
                _Label(
                    project=str(project_id),
                    when=str(details.get("updated_at") or details.get("created_at") or ""),
                    answers=list(_v2_answers(annotations.get("classifications"))),
                    objects=_count(annotations.get("objects")),
                )
            )
    return row


def _add_v1_label(item: Mapping, name: str, v1: dict[str, _Row], rows: list[tuple[str, _Row]]) -> None:
    url = str(item.get("Labeled Data") or "")
    key = str(item.get("DataRow ID") or url)
    row = v1.get(key)
    if row is None:
        given = _names(item.get("External ID"), item.get("Global Key"))
        row = v1[key] = _Row(
            origin=_origin(given, url), names=_names(url, item.get("Global Key"), item.get("External ID"))
        )
        rows.append((name, row))
    lab = item.get("Label")
    if item.get("Skipped") is True or lab == "Skip":  # "Skip": the oldest exports' skipped label
        row.skipped += 1
        return
    lab = lab if isinstance(lab, Mapping) else {}
    row.labels.append(
        _Label(
            project=str(item.get("Project Name") or ""),
            when=str(item.get("Updated At") or item.get("Created At") or ""),
            answers=list(_v1_answers(lab.get("classifications"))),
            objects=_count(lab.get("objects")),
        )
    )


def _count(objects: object) -> int:
    return len(objects) if isinstance(objects, list) else 0


def _named(obj: Mapping, *keys: str) -> str:
    """An option's or a question's name as shown to the labelers (v2 ``name``, v1 ``title``), else its
    ontology value."""
    return next((str(obj[k]).strip() for k in keys if isinstance(obj.get(k), str) and obj[k].strip()), "")


def _v2_answers(classifications: object, within: tuple[str, ...] = ()) -> Iterator[_Answer]:
    for c in classifications if isinstance(classifications, list) else ():
        if not isinstance(c, Mapping):
            continue
        question = _named(c, "name", "value")
        if isinstance(c.get("text_answer"), Mapping):
            yield _Answer(question, text=str(c["text_answer"].get("content") or ""), within=within)
            continue
        chosen = c.get("checklist_answers") if "checklist_answers" in c else [c.get("radio_answer")]
        options = [o for o in chosen or () if isinstance(o, Mapping)]
        if not options:
            continue
        yield _Answer(question, tuple(_named(o, "name", "value") for o in options), within=within)
        for o in options:  # a question asked only for this option
            yield from _v2_answers(o.get("classifications"), (*within, question))


def _v1_answers(classifications: object, within: tuple[str, ...] = ()) -> Iterator[_Answer]:
    for c in classifications if isinstance(classifications, list) else ():
        if isinstance(c, list):  # v1 writes some nested questions as a list in the list
            yield from _v1_answers(c, within)
            continue
        if not isinstance(c, Mapping):
            continue
        question = _named(c, "title", "value")
        answer = c.get("answers", c.get("answer"))
        if isinstance(answer, (str, int, float)) and not isinstance(answer, bool):
            yield _Answer(question, text=str(answer), within=within)
            continue
        # A radio's option, a checklist's ("answers") or a dropdown's ("answer") list of them.
        options = [o for o in (answer if isinstance(answer, list) else [answer]) if isinstance(o, Mapping)]
        if not options:
            continue
        yield _Answer(question, tuple(_named(o, "title", "value") for o in options), within=within)
        for o in options:
            yield from _v1_answers(o.get("classifications"), (*within, question))


# --- a row's labels -> tags and score ---------------------------------------------------------------------


def _labels_of(
    row: _Row, wanted: set[str] | None, score_question: str | None, seen: _Seen
) -> tuple[tuple[str, ...], float | None]:
    """The tags and score of a row: within a project its labels vote (a tag when most chose it, the mean
    score, as Label Studio's annotators); across projects each question's answer is the latest project's."""
    by_project: dict[str, list[_Label]] = defaultdict(list)
    for lab in row.labels:
        by_project[lab.project].append(lab)
    seen.voted += any(len(labs) > 1 for labs in by_project.values())
    seen.projects += len(by_project) > 1
    answered: dict[str, tuple[float | None, tuple[str, ...]]] = {}  # question -> (score, tags)
    for labs in sorted(by_project.values(), key=lambda labs: max(lab.when for lab in labs)):
        votes: dict[str, _Vote] = defaultdict(functools.partial(_Vote, annotations=len(labs)))
        for lab in labs:
            for a in lab.answers:
                if a.question == score_question:
                    value = _score(a)
                    if value is not None:
                        votes[a.question].scores.append(value)
                elif a.text is None and (wanted is None or wanted & {a.question, *a.within}):
                    for option in set(_no_separator([o for o in a.options if o])):
                        votes[a.question].tag_votes[option] += 1
        answered |= {question: _aggregate(vote) for question, vote in votes.items()}
    tags = {t for question, (_, chosen) in answered.items() if question != score_question for t in chosen}
    score = answered.get(score_question, (None, ()))[0] if score_question is not None else None
    return tuple(sorted(tags)), score


def _score(answer: _Answer) -> float | None:
    """The number a text answer, or the one option chosen (a 1-5 radio), is."""
    if answer.text is None and len(answer.options) != 1:
        raise ValueError(f"{answer.question}: {len(answer.options)} options chosen, not one number")
    try:
        return parse_score_cell(answer.text if answer.text is not None else answer.options[0])
    except ValueError as exc:
        raise ValueError(f"{answer.question}: {exc}") from None


def _count_left_out(row: _Row, seen: _Seen) -> None:
    if row.labels:
        seen.empty += 1
    elif row.skipped:
        seen.skipped += 1
    else:
        seen.unlabelled += 1


# --- refusals and notes -------------------------------------------------------------------------------------


def _refuse_unknown(name: str, seen: _Seen, wanted: set[str] | None, score: str | None) -> None:
    questions = seen.choices | seen.texts
    listed = ", ".join(sorted(questions)) or "none"
    for asked, what in (
        (sorted(wanted or ()), "--tags-column"),
        ([score] if score else [], "--score-column"),
    ):
        missing = [q for q in asked if q not in questions]
        if missing:
            raise FormatError(f"{name}: no question {missing[0]!r} ({what}; its questions: {listed})")


def _refuse_or_note(
    name: str,
    n_rows: int,
    seen: _Seen,
    wanted: set[str] | None,
    score: str | None,
    scored: int,
    out: Parsed,
) -> None:
    if not out.records and not seen.choices and not seen.texts and seen.objects:
        raise FormatError(
            f"{name} holds {seen.objects} objects and no classification: an object labels a region, not "
            "the photo; add a radio or checklist question about the whole image to the ontology"
        )
    if n_rows and not out.records and seen.skipped + seen.unlabelled == n_rows:
        raise FormatError(
            f"{name}: none of its {n_rows} data rows has a label that was not skipped: label them, "
            "export again"
        )
    if score is not None and not scored:
        raise FormatError(f"{name}: no data row has a number for {score!r} (--score-column)")
    read = sorted(q for q in seen.choices if q != score and (wanted is None or q in wanted))
    if wanted is None and len(read) > 1:
        out.notes.append(
            f"tags from {len(read)} questions together: {', '.join(read)} (name some with --tags-column)"
        )
    texts = sorted(seen.texts - {score})
    if texts:
        out.notes.append(f"free-text questions not read: {', '.join(texts)}")
    if seen.objects:
        out.notes.append(
            f"{seen.objects} objects (boxes, polygons, points, masks) not read: each labels a region, "
            "not the photo"
        )
    if seen.voted:
        out.notes.append(
            f"{seen.voted} data rows have several labels in a project: a tag counts when most of its "
            "labelers chose it, the score is their mean"
        )
    if seen.projects:
        out.notes.append(
            f"{seen.projects} data rows are labelled in several projects: a question several ask takes "
            "the latest project's answer"
        )
    for n, why in (
        (seen.skipped, "skipped by their labelers"),
        (seen.unlabelled, "not labelled yet"),
        (seen.empty, "labelled with no answer read here"),
    ):
        if n:
            out.notes.append(f"{n} data rows {why}, left out")
