"""Stage: measure a registered model version on the golden set, decide its gates, attach the evidence.

Measures (through the serving path: registry URI -> serving Predictor, images through
lightbox.imaging) the golden-set metrics, the behavioural tests and serving fitness; compares with
the champion on the same golden set when the champion answers the same labels; decides with
pipelines.gates; then records the verdict, every number and a report on the model version (tags) and
its run (metrics + ``gates/v<N>/`` artifacts), with the sha256 digest of the artifact files it loaded
(``gate.artifact_digest``), which every later load checks (lightbox.adapters.mlflow_registry).

The golden files are checked against ``golden.dvc`` before anything is measured: a verdict reports
the frozen version it was judged on, so it is never judged on other bytes (GoldenSetModified).

Scores are judged on the normalised scale, each side by its own declared range: predictions by the
model's score range, golden labels by the golden set's (its ``labels.json``, frozen with it; the model's
when it declares none), so ``golden.score_mae`` and the behavioural score moves are fractions of a range
and a dataset re-imported on another scale is still judged on the golden set frozen before. Only the
tags the golden set declares are judged on it: a model tag it never declares has no golden truth (a
renamed or new tag), is left out of every golden tag metric and named in a note. A model the golden set
holds no truth for at all (no tag in common, or golden scores on a scale that cannot be known) is
refused before anything is measured (GoldenSetIncomparable).
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import pandas as pd

from lightbox import distortions
from lightbox.adapters import dvc_repo, mlflow_registry
from lightbox.dataset import TAG_VOCABULARY
from lightbox.imaging import MODEL_INPUT_SIZE, decode_image, to_model_input
from lightbox.manifest import (
    LABELS_NAME,
    MANIFEST_NAME,
    LabelSpec,
    cell_to_tags,
    parse_score,
    read_label_spec,
    read_manifest,
    tags_matrix,
)
from lightbox.settings import Settings
from pipelines import behaviour
from pipelines.data import SOURCE_FORMAT as SYNTHETIC_FORMAT
from pipelines.data import resize_longest
from pipelines.gates import (
    AP_PREFIX,
    GRID_KEY,
    INT8_PREFIX,
    INT8_VERIFIED,
    POSITIVES_PREFIX,
    Baseline,
    GateVerdict,
    ModelLabels,
    decide,
)
from pipelines.golden import GoldenSetMissing
from pipelines.report import render_html, render_markdown
from training.metrics import (
    average_precision,
    expected_calibration_error,
    mae,
    mean_average_precision,
    micro_f1,
    plcc,
    srocc,
    srocc_by_kind,
)

EVIDENCE_SCHEMA = "4"  # bump when what is measured changes: recorded evidence of another schema is stale
INVARIANCE_RESIZE = 0.75  # longest side scale for the resize invariance
INVARIANCE_JPEG_QUALITY = 95
BLUR_LEVEL = 5  # lightbox.distortions level of the "blur lowers the score" check: unmistakable damage

Evidence = dict[str, float | None]


class GoldenSetModified(GoldenSetMissing):
    """The golden files differ from what ``golden.dvc`` records: the frozen set is not there to judge on.
    (A GoldenSetMissing, so every caller that reports a missing golden set reports this one too.)"""


class GoldenSetIncomparable(GoldenSetMissing):
    """The golden set holds no truth for what the model answers: no tag in common, or golden scores on a
    scale that cannot be known. Nothing to judge it on, as with no golden set (hence a GoldenSetMissing)."""


@dataclass
class GateReport:
    model_name: str
    version: str
    verdict: GateVerdict
    evidence: Evidence
    details: dict[str, str]
    golden_md5: str | None
    champion_version: str | None
    checked_at: str
    labels: ModelLabels | None = None  # what the model answers (None: not recorded in its metadata)
    artifacts: mlflow_registry.ArtifactDigest | None = None  # the files measured (None: reused, or no load)
    report_uri: str | None = None
    reused: bool = False  # True when read back from the version's tags, not measured now
    preds: pd.DataFrame | None = field(default=None, repr=False)
    runtime_tags: dict[str, str] = field(default_factory=dict)  # runtime_check's, recorded on the version
    # golden_label_notes (also among the verdict's notes): printed with a refusal, as they may explain it
    label_notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    def refusal_lines(self) -> list[str]:
        """What a refusal prints: every failing check, then the notes on the golden set's labels."""
        return self.verdict.reasons + [f"note: {n}" for n in self.label_notes]

    def to_dict(self) -> dict:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "passed": self.passed,
            "labels": None if self.labels is None else self.labels.to_dict(),
            "golden_md5": self.golden_md5,
            "champion_version": self.champion_version,
            "artifact_digest": None if self.artifacts is None else self.artifacts.digest,
            "checked_at": self.checked_at,
            "report_uri": self.report_uri,
            "reused": self.reused,
            "verdict": self.verdict.to_dict(),
            "runtime": self.runtime_tags or None,  # which runtime serves it, and why (not a gate)
            "evidence": self.evidence,
        }


@dataclass
class Measurement:
    evidence: Evidence
    details: dict[str, str]
    preds: pd.DataFrame | None  # one row per golden image (None when the golden set was not reached)
    labels: ModelLabels | None  # None: the model did not load, or its metadata has no label spec
    artifacts: mlflow_registry.ArtifactDigest | None = None  # the files loaded (None: it did not load)
    runtime_tags: dict[str, str] = field(default_factory=dict)  # what serves it (runtime_check)


# --- the golden set --------------------------------------------------------------------------------


def golden_vocabulary(spec: LabelSpec, rows: Iterable[Mapping[str, str]]) -> frozenset[str]:
    """The tags the golden set holds truth for, positive or negative: every tag it declares (its
    labels.json counts) or carries; the synthetic grid's renderer labels each image against the whole
    demo vocabulary (a procedural scene is truly no ``animal``), so that vocabulary is its own."""
    declared = frozenset(spec.tag_counts) | {t for r in rows for t in cell_to_tags(r["tags"])}
    return declared | set(TAG_VOCABULARY) if spec.source_format == SYNTHETIC_FORMAT else declared


@dataclass(frozen=True)
class GoldenSet:
    rows: list[dict[str, str]]
    spec: LabelSpec
    inputs: np.ndarray  # uint8 [N,3,224,224], through the serving decode
    raw: list[bytes]  # the encoded files, for the transforms of the behavioural checks

    @property
    def grid(self) -> bool:
        """The synthetic set's distortion grid (a ``distortions`` column): direction checks apply."""
        return "distortions" in self.rows[0]

    @property
    def ids(self) -> list[str]:
        return [r["image_id"] for r in self.rows]

    def true_scores(self) -> np.ndarray:
        """On the golden set's own scale; NaN where the image has no score label."""
        return np.array([parse_score(r["score"]) for r in self.rows], np.float64)

    def true_unit(self, labels: ModelLabels) -> np.ndarray:
        """The golden scores as fractions of the golden set's declared range (the model's when it declares
        none, as golden sets were read before they declared one)."""
        low, high = self.spec.score_range or _model_range(labels)
        return (self.true_scores() - low) / (high - low)

    @property
    def vocabulary(self) -> frozenset[str]:
        return golden_vocabulary(self.spec, self.rows)

    def judged_tags(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The model's tags the golden set holds truth for, in the model's order."""
        vocabulary = self.vocabulary
        return tuple(t for t in names if t in vocabulary)


def check_golden_frozen(settings: Settings) -> None:
    """Raise GoldenSetModified when the golden files are not byte for byte what ``golden.dvc`` records
    (as pipelines.golden checks a re-rendered set). No ``golden.dvc`` or no golden folder: left to the
    checks that report those (run() and load_golden say how to get them)."""
    if dvc_repo.tracked_md5(settings, settings.golden_subdir) is None:
        return
    if not (settings.golden_dir / MANIFEST_NAME).is_file():
        return
    if not dvc_repo.matches_tracked(settings, settings.golden_subdir):
        raise GoldenSetModified(
            f"{settings.golden_dir} differs from what {settings.golden_subdir}.dvc records: the gates judge "
            f"only the frozen golden set; restore it with `dvc checkout {settings.golden_subdir}.dvc` "
            "(or `dvc pull`), or, when it is the one to judge on (an import's new golden slice), freeze it "
            "with `lightbox golden` (the synthetic demo's is re-rendered with `lightbox golden --rebuild`)"
        )


def _no_golden_set(settings: Settings) -> str:
    return (
        f"no golden set at {settings.golden_dir}: the gates judge a version on the frozen golden set; "
        "run `lightbox golden` first (it restores a versioned one from DVC, or renders the synthetic "
        "demo's), or import one with `lightbox data import SOURCE --golden GOLDEN_SOURCE`"
    )


def _golden_not_versioned(settings: Settings) -> str:
    return (
        f"{settings.golden_subdir}.dvc is missing: the golden set at {settings.golden_dir} is not versioned, "
        "and the gates judge a version only on the frozen golden set; run `lightbox golden` to version it, "
        "then run this command again"
    )


def load_golden(settings: Settings) -> GoldenSet:
    folder = settings.golden_dir
    if not (folder / MANIFEST_NAME).is_file():
        raise GoldenSetMissing(_no_golden_set(settings))
    rows = read_manifest(folder)
    if not rows:
        raise ValueError(f"the golden set at {folder} is empty: nothing to judge a model on")
    raw = [(folder / r["path"]).read_bytes() for r in rows]
    inputs = np.stack([to_model_input(decode_image(b, max_pixels=settings.max_pixels)) for b in raw])
    return GoldenSet(rows, read_label_spec(folder), inputs, raw)


# --- measuring -------------------------------------------------------------------------------------


def _model_range(labels: ModelLabels) -> tuple[float, float]:
    if labels.score_range is None:
        raise ValueError("a tags-only model has no score scale")
    return labels.score_range


def normalise(scores: np.ndarray, labels: ModelLabels) -> np.ndarray:
    """The model's scale -> fractions of its score range (what every score threshold reads)."""
    low, high = _model_range(labels)
    return (np.asarray(scores, np.float64) - low) / (high - low)


def _names(tags: Iterable[str]) -> str:
    return ", ".join(tags) or "none"


def _span(values: tuple[float, float]) -> str:
    return f"{values[0]:g}..{values[1]:g}"


def check_comparable(golden: GoldenSet, labels: ModelLabels) -> None:
    """Raise GoldenSetIncomparable when the golden set holds no truth for what the model answers: a
    tagging model none of whose tags the golden set declares, or golden scores without a declared range
    that do not fit the model's (read on its scale, as before golden sets declared one, they would be
    judged on a scale nobody knows)."""
    again = "re-import with a golden split (`lightbox data import SOURCE --golden GOLDEN_SOURCE`) to gate it"
    if labels.has_tags and not golden.judged_tags(labels.tag_names):
        raise GoldenSetIncomparable(
            f"the golden set holds no truth for this model's tags: it declares "
            f"[{_names(sorted(golden.vocabulary))}], the model answers [{_names(labels.tag_names)}]; {again}"
        )
    if labels.has_score and golden.spec.score_range is None:
        true = golden.true_scores()
        true = true[np.isfinite(true)]
        low, high = _model_range(labels)
        if true.size and (true.min() < low or true.max() > high):
            raise GoldenSetIncomparable(
                f"the golden set declares no score range and its scores ({_span((true.min(), true.max()))}) "
                f"do not fit this model's {_span((low, high))}: their scale cannot be known; {again}"
            )


def _invariance_inputs(raw: list[bytes], max_pixels: int) -> dict[str, np.ndarray]:
    """The images resized and re-encoded as high-quality JPEG, through the serving decode."""
    resized, jpeg = [], []
    for data in raw:
        img = decode_image(data, max_pixels=max_pixels)
        small = resize_longest(img, max(MODEL_INPUT_SIZE, round(max(img.size) * INVARIANCE_RESIZE)))
        resized.append(to_model_input(small))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=INVARIANCE_JPEG_QUALITY)
        jpeg.append(to_model_input(decode_image(buf.getvalue(), max_pixels=max_pixels)))
    return {"resize": np.stack(resized), f"jpeg_q{INVARIANCE_JPEG_QUALITY}": np.stack(jpeg)}


def _blurred_inputs(raw: list[bytes], settings: Settings) -> np.ndarray:
    """Each image with a strong blur. The blur levels are tuned for a longest side of a few hundred
    pixels (lightbox.distortions), so a large photo is first brought down to image_max_side: blurred
    at full size, the 224-pixel model input would barely show it."""
    rng = np.random.default_rng(0)  # blur draws nothing; apply() takes a generator for every kind
    out = []
    for data in raw:
        img = decode_image(data, max_pixels=settings.max_pixels)
        img = resize_longest(img, min(max(img.size), settings.image_max_side))
        out.append(to_model_input(distortions.apply(img, "blur", BLUR_LEVEL, rng)))
    return np.stack(out)


def _predict(predictor, inputs: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    parts = [predictor.predict(inputs[i : i + batch]) for i in range(0, len(inputs), batch)]
    return np.concatenate([s for s, _ in parts]), np.concatenate([t for _, t in parts])


def _signature_fitness(info, tag_names: tuple[str, ...]) -> tuple[bool, str]:
    """The logged signature against the serving contract: uint8 [-1,3,224,224] -> float32 [-1,1+K],
    K = the number of tags (0 for a score-only model)."""
    sig = info.signature
    if sig is None or sig.inputs is None or sig.outputs is None:
        return False, "no signature logged"
    problems = []
    (inp,) = sig.inputs.inputs if len(sig.inputs.inputs) == 1 else (None,)
    (out,) = sig.outputs.inputs if len(sig.outputs.inputs) == 1 else (None,)
    want_in = (-1, 3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE)
    if inp is None or str(inp.type) != "uint8" or tuple(inp.shape) != want_in:
        problems.append(f"input {inp} is not uint8 {want_in}")
    if out is None or str(out.type) != "float32" or tuple(out.shape) != (-1, 1 + len(tag_names)):
        problems.append(f"output {out} is not float32 (-1, {1 + len(tag_names)})")
    logged = (info.metadata or {}).get("tag_names")
    if logged is None or tuple(logged) != tuple(tag_names):
        problems.append(f"metadata tag_names {logged} differ from the model's {list(tag_names)}")
    return not problems, "; ".join(problems)


def score_evidence(
    unit: np.ndarray, golden: GoldenSet, labels: ModelLabels
) -> tuple[Evidence, dict[str, str]]:
    """Score metrics on the golden images that carry a score label, each side normalised by its own
    range (``unit``: the model's answers already are)."""
    true = golden.true_unit(labels)
    scored = np.isfinite(true)
    ev: Evidence = {"golden.scored_images": float(scored.sum())}
    if scored.sum() < 2:
        why = f"{int(scored.sum())} golden image(s) carry a score label: no score metric can be measured"
        return ev, {"golden.score_srocc": why, "golden.score_mae": why}
    pred, true = unit[scored], true[scored]
    ev |= {
        "golden.score_srocc": srocc(pred, true),
        "golden.score_plcc": plcc(pred, true),
        "golden.score_mae": mae(pred, true),
    }
    if golden.grid:
        cells = [r["distortions"] for r, s in zip(golden.rows, scored, strict=True) if s]
        ev |= {f"golden.srocc.{kind}": v for kind, v in srocc_by_kind(pred, true, cells).items()}
    return ev, {}


def tag_evidence(
    probs: np.ndarray, golden: GoldenSet, names: tuple[str, ...], min_examples: int
) -> tuple[Evidence, dict[str, str]]:
    """Tag metrics against the golden tags, on the model's tags the golden set declares (golden tags
    outside the model's vocabulary are ignored; model tags outside the golden's have no truth there,
    are left out and named by golden_label_notes).

    Every judged tag's golden positives are recorded (the gates decide from them which AP floors apply);
    a tag's AP only when it has at least ``min_examples`` positives, as fewer make AP noise.
    """
    judged = golden.judged_tags(names)
    if not judged:
        return {}, {"golden.tags_map": "the golden set declares none of the model's tags: no golden truth"}
    probs = probs[:, [names.index(t) for t in judged]]
    names = judged
    truth = tags_matrix([r["tags"] for r in golden.rows], names)
    positives = truth.sum(axis=0)
    ev: Evidence = {f"{POSITIVES_PREFIX}{t}": float(n) for t, n in zip(names, positives, strict=True)}
    ev["golden.tags_ece"] = expected_calibration_error(probs, truth)
    details: dict[str, str] = {}
    if positives.sum() == 0:
        details["golden.tags_map"] = "no golden image carries any of the model's tags"
    else:
        ev["golden.tags_map"] = mean_average_precision(probs, truth)
        ev["golden.tags_micro_f1"] = micro_f1(probs, truth)
    for i, tag in enumerate(names):
        if positives[i] >= min_examples:
            ev[f"{AP_PREFIX}{tag}"] = average_precision(probs[:, i], truth[:, i])
    return ev, details


def predictions_table(
    golden: GoldenSet, scores: np.ndarray, probs: np.ndarray, names: tuple[str, ...], labels: ModelLabels
) -> pd.DataFrame:
    """One row per golden image: what the report plots and golden_predictions.csv shows. Scores on each
    side's own scale (``true_score``: the golden set's, ``score``: the model's) and normalised by that
    scale's range (``true_unit``, ``score_unit``)."""
    frame = pd.DataFrame(
        {
            "image_id": golden.ids,
            "group": [r["group"] for r in golden.rows],
            "original": [r["original"] for r in golden.rows],
            "tags": [r["tags"] for r in golden.rows],
            "true_score": golden.true_scores(),
        }
    )
    if golden.grid:
        parsed = [behaviour.parse_distortions(r["distortions"]) for r in golden.rows]
        frame = frame.assign(
            distortions=[r["distortions"] for r in golden.rows],
            kind=[k for k, _ in parsed],
            level=[lvl for _, lvl in parsed],
        )
    if labels.has_score:
        frame = frame.assign(
            score=scores,
            true_unit=golden.true_unit(labels),
            score_unit=normalise(scores, labels),
        )
    return frame.assign(**{f"p:{t}": probs[:, i] for i, t in enumerate(names)})


def behaviour_results(
    predictor, golden: GoldenSet, preds: pd.DataFrame, labels: ModelLabels, settings: Settings
) -> tuple[list[behaviour.BehaviourResult], dict[str, str]]:
    """The behavioural checks settings.gate_behaviour asks for and the golden set supports (the same
    rules pipelines.gates.behaviour_checks requires)."""
    mode = settings.gate_behaviour
    results: list[behaviour.BehaviourResult] = []
    details: dict[str, str] = {}
    if mode == "off":
        return results, details
    if labels.has_score:
        unit = preds["score_unit"].to_numpy()
        # On the grid, invariance is asked of the pristine images only: a distorted one may move.
        keep = (preds["kind"] == behaviour.PRISTINE).to_numpy() if golden.grid else np.ones(len(preds), bool)
        raw = [r for r, k in zip(golden.raw, keep, strict=True) if k]
        moved = {
            name: normalise(_predict(predictor, x)[0], labels)
            for name, x in _invariance_inputs(raw, settings.max_pixels).items()
        }
        ids = [i for i, k in zip(golden.ids, keep, strict=True) if k]
        results.append(behaviour.invariance(unit[keep], moved, ids, settings.gate_invariance_epsilon))
        if golden.grid:
            graded = preds.assign(score=preds["score_unit"])
            results.append(
                behaviour.direction(graded, settings.gate_direction_slack, settings.gate_direction_min_drop)
            )
        elif mode == "on":
            blurred = normalise(_predict(predictor, _blurred_inputs(golden.raw, settings))[0], labels)
            results.append(
                behaviour.lowers_score(unit, blurred, golden.ids, settings.gate_direction_min_drop)
            )
    if golden.grid and labels.has_tags:
        try:
            results.append(behaviour.minimum_functionality(preds, settings.serve_tag_threshold))
        except ValueError as exc:  # the model lacks a defect tag: the check's number stays missing
            details["behaviour.min_functionality_pass_rate"] = str(exc)
    return results, details


def _describe(result: behaviour.BehaviourResult) -> str:
    shown = result.failures[:8] + (
        [f"... and {len(result.failures) - 8} more"] if len(result.failures) > 8 else []
    )
    return f"{len(result.failures)}/{result.cases} failing" + (": " + "; ".join(shown) if shown else "")


def _latency_ms(predictor, inputs: np.ndarray, n: int) -> float:
    batch = np.resize(inputs, (n, *inputs.shape[1:]))  # repeats golden images when n > len(golden)
    predictor.warmup((n,))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        predictor.predict(batch)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def read_labels(metadata: dict) -> tuple[ModelLabels | None, str]:
    """(labels, "") from a model's metadata, or (None, why) when it records no label spec."""
    try:
        return ModelLabels.from_metadata(metadata), ""
    except ValueError as exc:
        return None, str(exc)


def version_labels(settings: Settings, version: str) -> tuple[ModelLabels | None, str]:
    info = mlflow_registry.model_info(settings, f"models:/{settings.model_name}/{version}")
    return read_labels(info.metadata or {})


def measure(settings: Settings, version: str) -> Measurement:
    """Every number the gates read, for one version. A step that cannot run leaves its numbers out
    (so their checks fail as missing) and says why in ``details``."""
    from training.predictor import Predictor

    ev: Evidence = {}
    details: dict[str, str] = {}
    uri = f"models:/{settings.model_name}/{version}"
    try:
        # The one loader every server uses, allowed here to load a version nobody has judged yet (that is
        # what the gates are for); files that differ from a digest recorded earlier are still refused.
        loaded = mlflow_registry.load_version(settings, str(version), allow_unverified=True)
        model, artifacts = loaded.model, loaded.digest
        # An int8 candidate is judged on its int8 graph, on the CPU where that graph serves (a CUDA
        # predictor would run the fp32 weights): every number below is what it would serve.
        int8 = loaded.onnx if loaded.quantized else None
        device = "cpu" if loaded.quantized else None
        predictor = Predictor(
            model, settings.model_name, str(version), device, onnx=int8, quantized=int8 is not None
        )
    except Exception as exc:  # any load failure is the verdict itself: recorded, and the gate fails
        ev["serving.loads"] = 0.0
        details["serving.loads"] = f"{uri} does not load: {type(exc).__name__}: {exc}"[:500]
        return Measurement(ev, details, None, None)
    ev["serving.loads"] = 1.0
    info = mlflow_registry.model_info(settings, uri)
    ok, why = _signature_fitness(info, predictor.tag_names)
    ev["serving.signature"] = 1.0 if ok else 0.0
    details["serving.signature"] = why
    labels, why = read_labels(info.metadata or {})
    if labels is None:  # which checks apply, and on what scale, is unknown: measure nothing more
        details["model.labels"] = why
        return Measurement(ev, details, None, None, artifacts)

    golden = load_golden(settings)
    check_comparable(golden, labels)  # raises: no verdict on a golden set that holds no truth for it
    names = predictor.tag_names
    scores, probs = _predict(predictor, golden.inputs)
    ev[GRID_KEY] = 1.0 if golden.grid else 0.0
    ev["golden.images"] = float(len(golden.rows))
    preds = predictions_table(golden, scores, probs, names, labels)
    if labels.has_score:
        part, why_not = score_evidence(preds["score_unit"].to_numpy(), golden, labels)
        ev, details = ev | part, details | why_not
    if labels.has_tags:
        part, why_not = tag_evidence(probs, golden, names, settings.gate_min_golden_tag_examples)
        ev, details = ev | part, details | why_not
    results, why_not = behaviour_results(predictor, golden, preds, labels, settings)
    details |= why_not
    for r in results:
        ev[f"behaviour.{r.name}"] = r.value
        details[f"behaviour.{r.name}"] = _describe(r)
    ev["serving.batch_latency_ms"] = _latency_ms(predictor, golden.inputs, settings.gate_latency_batch_size)
    part, runtime_details, runtime_tags = runtime_check(
        settings, model, loaded.onnx, golden, labels, ev, quantized=loaded.quantized
    )
    if loaded.quantized and not predictor.quantized:  # its numbers above are the fp32 weights'
        part[INT8_VERIFIED] = 0.0
        runtime_details[INT8_VERIFIED] = (
            "refused: the int8 graph did not load or answered non-finite numbers on the probe batch "
            "(the golden numbers are its fp32 weights'): the gates refuse this int8 candidate"
        )
    return Measurement(ev | part, details | runtime_details, preds, labels, artifacts, runtime_tags)


# --- the exported runtime ----------------------------------------------------------------------------

ONNX_PREFIX = "export.onnx."
# The golden metrics the export must reproduce: what the gates decide on.
_JUDGED_METRICS = ("golden.score_srocc", "golden.score_plcc", "golden.score_mae", "golden.tags_map")


def runtime_check(
    settings: Settings,
    model,
    onnx: bytes | None,
    golden: GoldenSet,
    labels: ModelLabels,
    torch_evidence: Evidence,
    *,
    quantized: bool = False,
) -> tuple[Evidence, dict[str, str], dict[str, str]]:
    """Judge the version's ONNX export against its eager model on the golden set: the largest output
    difference (normalised score and tag probabilities), the largest golden-metric delta and its
    batch latency beside torch's. Returns (evidence, details, the version tags that tell the loaders
    which runtime serves: ``runtime.onnx`` verified/refused/missing and ``runtime.cpu``).

    Not a gate for an fp32 export: a refused export does not stop the version, it serves on torch
    (with a warning at every load and the reason on the version). ``quantized`` (an int8 candidate):
    its golden metrics must stay within ``gate_int8_max_metric_delta`` of its fp32 weights' (outputs
    move by design, so their difference is reported, not limited), under ``export.int8.*``, which the
    gates require: an int8 candidate that is not verified is refused.
    """
    from training.export import OnnxModel
    from training.predictor import Predictor

    prefix = INT8_PREFIX if quantized else ONNX_PREFIX
    if quantized:
        max_diff, max_delta = math.inf, settings.gate_int8_max_metric_delta
        limits = f"limit: metric delta <= {max_delta:g} (gate_int8_max_metric_delta)"
        fallback = "the gates refuse this int8 candidate"
    else:
        max_diff, max_delta = settings.gate_export_max_abs_diff, settings.gate_export_max_metric_delta
        limits = f"limits: |diff| <= {max_diff:g}, metric delta <= {max_delta:g}"
        fallback = "it serves on torch"
    tags: dict[str, str] = {}
    torch_ms = torch_evidence.get("serving.batch_latency_ms")
    torch_cpu = (
        f"torch ({torch_ms:.1f} ms per batch of {settings.gate_latency_batch_size})" if torch_ms else "torch"
    )
    if onnx is None:
        if quantized:  # an int8 candidate without its graph is nothing to serve: refused
            why = "refused: the int8 candidate has no model.onnx: the gates refuse it"
            return {INT8_VERIFIED: 0.0}, {INT8_VERIFIED: why}, {mlflow_registry.RUNTIME_CPU_TAG: torch_cpu}
        why = "the version has no ONNX export: it serves on torch"
        return {}, {prefix + "verified": why}, {mlflow_registry.RUNTIME_CPU_TAG: torch_cpu}
    try:
        session = OnnxModel(onnx)
        out = np.concatenate([session(golden.inputs[i : i + 32]) for i in range(0, len(golden.inputs), 32)])
    except Exception as exc:  # an export the runtime cannot run is refused, whatever the reason
        why = f"does not run under ONNX Runtime: {type(exc).__name__}: {exc}"[:400]
        return (
            {prefix + "verified": 0.0},
            {prefix + "verified": f"{why}: {fallback}"},
            {
                mlflow_registry.RUNTIME_ONNX_TAG: f"{mlflow_registry.ONNX_REFUSED}: {why}",
                mlflow_registry.RUNTIME_CPU_TAG: torch_cpu,
            },
        )
    eager_scores, eager_probs = _predict(Predictor(model, "eager", "-", "cpu", trace=False), golden.inputs)
    onnx_scores, onnx_probs = out[:, 0], out[:, 1:]
    diff = _output_difference((eager_scores, eager_probs), (onnx_scores, onnx_probs), labels)
    delta, worst = _metric_delta(
        golden, labels, (eager_scores, eager_probs), (onnx_scores, onnx_probs), settings
    )
    onnx_ms = _latency_ms(_ArrayPredictor(session), golden.inputs, settings.gate_latency_batch_size)
    ev: Evidence = {
        prefix + "max_abs_diff": diff,
        prefix + "max_metric_delta": delta,
        prefix + "batch_latency_ms": onnx_ms,
    }
    measured = f"max |diff| {diff:.2g}, max metric delta {delta:.2g}{worst}, {onnx_ms:.1f} ms per batch"
    if quantized:
        measured = f"int8 against its fp32 weights: {measured}"
    ok = diff <= max_diff and delta <= max_delta
    ev[prefix + "verified"] = 1.0 if ok else 0.0
    if ok:
        tags[mlflow_registry.RUNTIME_ONNX_TAG] = f"{mlflow_registry.ONNX_VERIFIED}: {measured}"
        faster = torch_ms is None or onnx_ms <= torch_ms
        tags[mlflow_registry.RUNTIME_CPU_TAG] = (
            # An int8 candidate serves its graph whatever torch does (training.predictor.pick_runtime);
            # its serving.batch_latency_ms is the int8 graph's own.
            f"onnxruntime-int8 ({onnx_ms:.1f} ms per batch of {settings.gate_latency_batch_size})"
            if quantized
            else f"onnxruntime ({onnx_ms:.1f} ms vs {torch_cpu})"
            if faster
            else f"{torch_cpu} vs onnxruntime {onnx_ms:.1f} ms"
        )
        return ev, {prefix + "verified": f"verified: {measured}"}, tags
    why = f"{measured} ({limits}): {fallback}"
    tags[mlflow_registry.RUNTIME_ONNX_TAG] = f"{mlflow_registry.ONNX_REFUSED}: {why}"
    tags[mlflow_registry.RUNTIME_CPU_TAG] = torch_cpu
    return ev, {prefix + "verified": f"refused: {why}"}, tags


class _ArrayPredictor:
    """An ONNX session with the two methods ``_latency_ms`` calls."""

    def __init__(self, session) -> None:
        self.session = session

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.session(batch)

    def warmup(self, sizes: tuple[int, ...]) -> None:
        for n in sizes:
            self.session(np.zeros((n, 3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE), np.uint8))


def _output_difference(
    eager: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray], labels: ModelLabels
) -> float:
    """Largest |difference| over the normalised scores and the tag probabilities (NaN scores of a
    tags-only model compare equal; NaN against a number is infinite)."""
    parts = []
    if labels.has_score:
        a, b = normalise(eager[0], labels), normalise(other[0], labels)
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return float("inf")
        parts.append(np.nan_to_num(np.abs(a - b)))
    if eager[1].size:
        parts.append(np.abs(eager[1] - other[1]))
    return float(max((p.max() for p in parts if p.size), default=0.0))


def _metric_delta(
    golden: GoldenSet,
    labels: ModelLabels,
    eager: tuple[np.ndarray, np.ndarray],
    other: tuple[np.ndarray, np.ndarray],
    settings: Settings,
) -> tuple[float, str]:
    """The largest |delta| between the golden metrics of the two, and which metric (for the message)."""

    def metrics(scores: np.ndarray, probs: np.ndarray) -> Evidence:
        ev: Evidence = {}
        if labels.has_score:
            ev |= score_evidence(normalise(scores, labels), golden, labels)[0]
        if labels.has_tags:
            ev |= tag_evidence(probs, golden, tuple(labels.tag_names), settings.gate_min_golden_tag_examples)[
                0
            ]
        return {k: v for k, v in ev.items() if k in _JUDGED_METRICS or k.startswith(AP_PREFIX)}

    a, b = metrics(*eager), metrics(*other)
    deltas = {k: abs(x - y) for k, x in a.items() if x is not None and (y := b.get(k)) is not None}
    finite = {k: v for k, v in deltas.items() if np.isfinite(v)}
    if not finite:
        return 0.0, ""
    worst = max(finite, key=lambda k: finite[k])
    return finite[worst], f" ({worst})"


def golden_label_notes(settings: Settings, labels: ModelLabels | None) -> list[str]:
    """Where the golden set's labels differ from the model's (a dataset re-imported with another scale
    or renamed tags since its golden set was frozen): the scales, each normalised by its own range, and
    the model's tags the golden set holds no truth for (not judged on it). Short: the refusals print
    them."""
    if labels is None or not (settings.golden_dir / LABELS_NAME).is_file():
        return []
    spec = read_label_spec(settings.golden_dir)
    notes = []
    ours = labels.score_range
    if ours is not None and spec.score_range != ours:
        notes.append(
            f"golden scores on {_span(spec.score_range)}, this model's on {_span(ours)}: each normalised by "
            "its own range"
            if spec.score_range is not None
            else f"the golden set declares no score range: its scores are read on this model's {_span(ours)}"
        )
    if labels.has_tags and (settings.golden_dir / MANIFEST_NAME).is_file():
        declared = golden_vocabulary(spec, read_manifest(settings.golden_dir))
        missing = [t for t in labels.tag_names if t not in declared]
        if missing:
            notes.append(
                f"tags without golden truth: {', '.join(missing)}: re-import with a golden split to gate them"
            )
    return notes


# --- recording -------------------------------------------------------------------------------------


def _measured_with(settings: Settings) -> str:
    """The settings that change what measure() records: evidence measured under others is not reused."""
    return f"behaviour={settings.gate_behaviour};min_tag_examples={settings.gate_min_golden_tag_examples}"


def _recorded(settings: Settings, mv) -> Evidence | None:
    """A version's recorded golden evidence, if measured on this golden set under this schema, on files
    whose digest was recorded (evidence from before digests is measured again, which records one)."""
    tags = mv.tags or {}
    golden_md5 = dvc_repo.tracked_md5(settings, settings.golden_subdir)
    if tags.get("gate.schema") != EVIDENCE_SCHEMA or tags.get("gate.golden_md5") != golden_md5:
        return None
    if not tags.get(mlflow_registry.DIGEST_TAG):
        return None
    if tags.get("gate.measured_with") != _measured_with(settings) or "gate.evidence" not in tags:
        return None
    return json.loads(tags["gate.evidence"])


def champion_evidence(settings: Settings, champion_version: str) -> Evidence:
    """The champion's numbers on today's golden set: read back when recorded, else measured now."""
    recorded = _recorded(settings, mlflow_registry.get_version(settings, champion_version))
    if recorded is not None:
        return recorded
    return measure(settings, champion_version).evidence


def baseline(settings: Settings, champion_version: str, labels: ModelLabels | None) -> Baseline:
    """The champion as a regression baseline; its numbers only when it answers the same labels (a
    champion of other labels is no baseline, so it is not measured either)."""
    theirs, _ = version_labels(settings, champion_version)
    if labels is None or theirs is None or not theirs.same_labels(labels):
        return Baseline(champion_version, theirs)
    return Baseline(champion_version, theirs, champion_evidence(settings, champion_version))


def run(settings: Settings, version: str, *, record: bool = True, reuse: bool = False) -> GateReport:
    """Measure, decide and (unless ``record`` is False) attach the verdict and report to the version.

    ``reuse``: take the version's recorded evidence when it was measured on this golden set under
    this schema (promotion after a `lightbox gates` run); the verdict is always decided now, against
    today's thresholds and today's champion.
    """
    version = str(version)
    check_golden_frozen(settings)  # before anything is measured or reused: one message, no verdict
    if not (settings.golden_dir / MANIFEST_NAME).is_file():
        # Nothing to judge on: say so before a verdict whose every golden check fails as "missing".
        raise GoldenSetMissing(_no_golden_set(settings))
    golden_md5 = dvc_repo.tracked_md5(settings, settings.golden_subdir)
    if golden_md5 is None:
        # Golden files without a DVC version are not the frozen set, and a verdict names the version it
        # was judged on: refuse now, not after minutes of measuring whose every golden check is missing.
        raise GoldenSetMissing(_golden_not_versioned(settings))
    mv = mlflow_registry.get_version(settings, version)
    run_metrics = mlflow_registry.get_run(settings, mv.run_id).data.metrics

    recorded = _recorded(settings, mv) if reuse else None
    if recorded is not None:
        labels, why = version_labels(settings, version)
        m = Measurement(recorded, {"model.labels": why} if why else {}, None, labels)
    else:
        m = measure(settings, version)
    ev, details = m.evidence, m.details
    champion = mlflow_registry.version_or_none(settings, settings.champion_alias)
    champion_version = None if champion is None or str(champion.version) == version else str(champion.version)
    base = None if champion_version is None else baseline(settings, champion_version, m.labels)
    notes = golden_label_notes(settings, m.labels)
    verdict = decide(ev, details, run_metrics, m.labels, base, settings, notes)
    report = GateReport(
        model_name=settings.model_name,
        version=version,
        verdict=verdict,
        evidence=ev,
        details=details,
        golden_md5=golden_md5,
        champion_version=champion_version,
        checked_at=datetime.now(UTC).replace(microsecond=0).isoformat(),
        labels=m.labels,
        artifacts=m.artifacts,
        report_uri=(mv.tags or {}).get("gate.report", "").removesuffix("/report.html") or None,
        reused=recorded is not None,
        preds=m.preds,
        runtime_tags=m.runtime_tags,
        label_notes=notes,
    )
    if record:
        # A failed run on the version that holds the champion alias (its ONNX file missing that moment,
        # say) keeps the evidence it was promoted on: the regression baseline of every promotion reads
        # it, and a failed run's evidence lacks the numbers a baseline needs.
        keep = champion is not None and str(champion.version) == version and not report.passed
        _record(settings, mv.run_id, report, None if base is None else base.evidence, keep_evidence=keep)
    return report


def metric_name(key: str) -> str:
    """An evidence key as an MLflow metric name: ``golden.ap.<tag>`` carries the user's tag, and MLflow
    takes letters, digits, ``_ - .`` and spaces only (a slash would read as a path)."""
    return re.sub(r"[^\w\-. ]", "_", key.replace(".", "_"))


def _record(
    settings: Settings,
    run_id: str,
    report: GateReport,
    champion_ev: Mapping[str, float | None] | None,
    *,
    keep_evidence: bool = False,
) -> None:
    """Attach the verdict and its report to the version (and the numbers to its run). ``keep_evidence``:
    the version's recorded evidence (``gate.evidence`` and what it was measured on) is left as it is; the
    verdict, the report and the run's metrics are still this run's."""
    failed = [c.name for c in report.verdict.checks if not c.passed]
    decision = {
        "gate.passed": str(report.passed).lower(),
        "gate.failed_checks": ",".join(failed) or "-",
        "gate.summary": report.verdict.summary()[:4900],  # registry tag values are capped at 5000 chars
        "gate.champion_version": report.champion_version or "",
        "gate.checked_at": report.checked_at,
    }
    if report.reused:  # the evidence and its report are already attached; only the decision is new
        mlflow_registry.set_version_tags(settings, report.version, decision)
        return
    artifact_path = f"gates/v{report.version}"
    with TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "gates.json").write_text(json.dumps(report.to_dict() | {"details": report.details}, indent=2))
        (out / "report.md").write_text(render_markdown(report, champion_ev))
        (out / "report.html").write_text(render_html(report, champion_ev))
        if report.preds is not None:
            report.preds.to_csv(out / "golden_predictions.csv", index=False)
        mlflow_registry.log_run_artifacts(settings, run_id, out, artifact_path)
    # A runs:/ URI, not the store's file:// path: it resolves through whatever tracking server a
    # reader uses (`mlflow artifacts download -u ...`), and names the run the UI shows it under.
    report.report_uri = f"runs:/{run_id}/{artifact_path}"
    numeric = {metric_name(k): v for k, v in report.evidence.items() if v is not None and np.isfinite(v)}
    mlflow_registry.log_run_metrics(settings, run_id, numeric)
    evidence = {
        "gate.evidence": json.dumps(report.evidence),
        "gate.golden_md5": report.golden_md5 or "",
        "gate.schema": EVIDENCE_SCHEMA,
        "gate.measured_with": _measured_with(settings),
    }
    mlflow_registry.set_version_tags(
        settings,
        report.version,
        decision
        | ({} if keep_evidence else evidence)
        | {"gate.report": f"{report.report_uri}/report.html"}
        | report.runtime_tags
        # The files these numbers were measured on: what every later load must find. Not overwritten
        # when the version no longer loads (its recorded digest is what the refusal compared with).
        | ({} if report.artifacts is None else report.artifacts.tags()),
    )
