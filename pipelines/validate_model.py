"""Stage: measure a registered model version on the golden set, decide its gates, attach the evidence.

Measures (through the serving path: registry URI -> serving Predictor, images through
lightbox.imaging) the golden-set metrics, the behavioural tests and serving fitness; compares with
the champion on the same golden set; decides with pipelines.gates; then records the verdict, every
number and a report on the model version (tags) and its run (metrics + ``gates/v<N>/`` artifacts).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import pandas as pd

from lightbox.adapters import dvc_repo, mlflow_registry
from lightbox.imaging import MODEL_INPUT_SIZE, decode_image, to_model_input
from lightbox.settings import Settings
from pipelines import behaviour
from pipelines.data import MANIFEST_NAME, resize_longest
from pipelines.gates import GateVerdict, decide
from pipelines.report import render_html, render_markdown
from training.metrics import evaluate, expected_calibration_error, per_tag_ap, srocc_by_kind

EVIDENCE_SCHEMA = "1"  # bump when what is measured changes: recorded evidence of another schema is stale
INVARIANCE_RESIZE = 0.75  # longest side scale for the resize invariance
INVARIANCE_JPEG_QUALITY = 95


@dataclass
class GateReport:
    model_name: str
    version: str
    verdict: GateVerdict
    evidence: dict[str, float | None]
    details: dict[str, str]
    golden_md5: str | None
    champion_version: str | None
    checked_at: str
    report_uri: str | None = None
    reused: bool = False  # True when read back from the version's tags, not measured now
    preds: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    def to_dict(self) -> dict:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "passed": self.passed,
            "golden_md5": self.golden_md5,
            "champion_version": self.champion_version,
            "checked_at": self.checked_at,
            "report_uri": self.report_uri,
            "reused": self.reused,
            "verdict": self.verdict.to_dict(),
            "evidence": self.evidence,
        }


# --- measuring -------------------------------------------------------------------------------------


def load_golden(settings: Settings) -> tuple[pd.DataFrame, np.ndarray, list[bytes]]:
    """(manifest with kind/level columns, model inputs uint8 [N,3,224,224], encoded bytes)."""
    path = settings.golden_dir / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no golden set at {settings.golden_dir}: run `lightbox golden` first")
    frame = pd.read_csv(path, dtype={"image_id": str, "tags": str}, keep_default_na=False)
    parsed = [behaviour.parse_distortions(d) for d in frame["distortions"]]
    frame["kind"] = [k for k, _ in parsed]
    frame["level"] = [lvl for _, lvl in parsed]
    raw = [(settings.golden_dir / p).read_bytes() for p in frame["path"]]
    inputs = np.stack([to_model_input(decode_image(b, max_pixels=settings.max_pixels)) for b in raw])
    return frame, inputs, raw


def _invariance_inputs(raw: list[bytes], max_pixels: int) -> dict[str, np.ndarray]:
    """The pristine images resized and re-encoded as high-quality JPEG, through the serving decode."""
    resized, jpeg = [], []
    for data in raw:
        img = decode_image(data, max_pixels=max_pixels)
        small = resize_longest(img, max(MODEL_INPUT_SIZE, round(max(img.size) * INVARIANCE_RESIZE)))
        resized.append(to_model_input(small))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=INVARIANCE_JPEG_QUALITY)
        jpeg.append(to_model_input(decode_image(buf.getvalue(), max_pixels=max_pixels)))
    return {"resize": np.stack(resized), f"jpeg_q{INVARIANCE_JPEG_QUALITY}": np.stack(jpeg)}


def _predict(predictor, inputs: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    parts = [predictor.predict(inputs[i : i + batch]) for i in range(0, len(inputs), batch)]
    return np.concatenate([s for s, _ in parts]), np.concatenate([t for _, t in parts])


def _tag_matrix(tags: pd.Series, names: tuple[str, ...]) -> np.ndarray:
    index = {t: i for i, t in enumerate(names)}
    out = np.zeros((len(tags), len(names)), np.float32)
    for row, text in enumerate(tags):
        for t in filter(None, str(text).split("|")):
            if t in index:
                out[row, index[t]] = 1.0
    return out


def _signature_fitness(settings: Settings, uri: str, tag_names: tuple[str, ...]) -> tuple[bool, str]:
    """The logged signature against the serving contract: uint8 [-1,3,224,224] -> float32 [-1,1+K]."""
    info = mlflow_registry.model_info(settings, uri)
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


def measure(
    settings: Settings, version: str
) -> tuple[dict[str, float | None], dict[str, str], pd.DataFrame | None]:
    """Every number the gates read, for one version. A step that cannot run leaves its numbers out
    (so their checks fail as missing) and says why in ``details``."""
    from serving.predictor import RegistryLoader

    ev: dict[str, float | None] = {}
    details: dict[str, str] = {}
    uri = f"models:/{settings.model_name}/{version}"
    try:
        predictor = RegistryLoader(settings, settings.champion_alias).load(str(version))
    except Exception as exc:  # any load failure is the verdict itself: recorded, and the gate fails
        ev["serving.loads"] = 0.0
        details["serving.loads"] = f"{uri} does not load: {type(exc).__name__}: {exc}"[:500]
        return ev, details, None
    ev["serving.loads"] = 1.0
    ok, why = _signature_fitness(settings, uri, predictor.tag_names)
    ev["serving.signature"] = 1.0 if ok else 0.0
    details["serving.signature"] = why

    frame, inputs, raw = load_golden(settings)
    names = predictor.tag_names
    scores, probs = _predict(predictor, inputs)
    labels = _tag_matrix(frame["tags"], names)
    true = frame["score"].to_numpy(np.float32)
    m = evaluate(scores, true, probs, labels)
    ev |= {f"golden.{k}": v for k, v in m.items()}
    ev["golden.tags_ece"] = expected_calibration_error(probs, labels)
    for tag, ap in per_tag_ap(probs, labels, names).items():
        if not np.isnan(ap):  # a tag with no positives in the golden set has no AP to judge
            ev[f"golden.ap.{tag}"] = ap
    for kind, v in srocc_by_kind(scores, true, frame["distortions"].tolist()).items():
        ev[f"golden.srocc.{kind}"] = v

    preds = frame[["image_id", "source_id", "distortions", "kind", "level", "score", "tags"]].rename(
        columns={"score": "true_score"}
    )
    preds = preds.assign(score=scores, **{f"p:{t}": probs[:, i] for i, t in enumerate(names)})

    pristine = (frame["kind"] == behaviour.PRISTINE).to_numpy()
    moved = {
        name: _predict(predictor, x)[0]
        for name, x in _invariance_inputs(
            [r for r, p in zip(raw, pristine, strict=True) if p], settings.max_pixels
        ).items()
    }
    results = [
        behaviour.invariance(
            scores[pristine], moved, frame["image_id"][pristine].tolist(), settings.gate_invariance_epsilon
        ),
        behaviour.direction(preds, settings.gate_direction_slack, settings.gate_direction_min_drop),
        behaviour.minimum_functionality(preds, settings.serve_tag_threshold),
    ]
    for r in results:
        ev[f"behaviour.{r.name}"] = r.value
        shown = r.failures[:8] + ([f"... and {len(r.failures) - 8} more"] if len(r.failures) > 8 else [])
        details[f"behaviour.{r.name}"] = f"{len(r.failures)}/{r.cases} failing" + (
            ": " + "; ".join(shown) if shown else ""
        )

    n = settings.gate_latency_batch_size
    batch = np.resize(inputs, (n, *inputs.shape[1:]))  # repeats golden images when n > len(golden)
    predictor.warmup((n,))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        predictor.predict(batch)
        times.append((time.perf_counter() - t0) * 1000)
    ev["serving.batch_latency_ms"] = float(np.median(times))
    return ev, details, preds


# --- recording -------------------------------------------------------------------------------------


def _recorded(settings: Settings, mv) -> dict[str, float | None] | None:
    """A version's recorded golden evidence, if measured on this golden set under this schema."""
    tags = mv.tags or {}
    golden_md5 = dvc_repo.tracked_md5(settings, settings.golden_subdir)
    if tags.get("gate.schema") != EVIDENCE_SCHEMA or tags.get("gate.golden_md5") != golden_md5:
        return None
    if "gate.evidence" not in tags:
        return None
    return json.loads(tags["gate.evidence"])


def champion_evidence(settings: Settings, champion_version: str) -> dict[str, float | None]:
    """The champion's numbers on today's golden set: read back when recorded, else measured now."""
    recorded = _recorded(settings, mlflow_registry.get_version(settings, champion_version))
    if recorded is not None:
        return recorded
    ev, _, _ = measure(settings, champion_version)
    return ev


def run(settings: Settings, version: str, *, record: bool = True, reuse: bool = False) -> GateReport:
    """Measure, decide and (unless ``record`` is False) attach the verdict and report to the version.

    ``reuse``: take the version's recorded evidence when it was measured on this golden set under
    this schema (promotion after a `lightbox gates` run); the verdict is always decided now, against
    today's thresholds and today's champion.
    """
    version = str(version)
    mv = mlflow_registry.get_version(settings, version)
    run_metrics = mlflow_registry.get_run(settings, mv.run_id).data.metrics
    golden_md5 = dvc_repo.tracked_md5(settings, settings.golden_subdir)

    recorded = _recorded(settings, mv) if reuse else None
    details: dict[str, str]
    if recorded is not None:
        ev, details, preds = recorded, {}, None
    else:
        ev, details, preds = measure(settings, version)
    if golden_md5 is None:
        # Golden files without a DVC version are not the frozen set: refuse to judge on them.
        ev = {k: v for k, v in ev.items() if not k.startswith(("golden.", "behaviour."))}
        details["golden"] = f"{settings.golden_subdir}.dvc is missing: the golden set is not versioned"
    champion = mlflow_registry.version_or_none(settings, settings.champion_alias)
    champion_version = None if champion is None or str(champion.version) == version else str(champion.version)
    champion_ev = None if champion_version is None else champion_evidence(settings, champion_version)
    verdict = decide(ev, details, run_metrics, champion_ev, champion_version, settings)
    report = GateReport(
        model_name=settings.model_name,
        version=version,
        verdict=verdict,
        evidence=ev,
        details=details,
        golden_md5=golden_md5,
        champion_version=champion_version,
        checked_at=datetime.now(UTC).replace(microsecond=0).isoformat(),
        report_uri=(mv.tags or {}).get("gate.report", "").removesuffix("/report.html") or None,
        reused=recorded is not None,
        preds=preds,
    )
    if record:
        _record(settings, mv.run_id, report, champion_ev)
    return report


def _record(settings: Settings, run_id: str, report: GateReport, champion_ev) -> None:
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
        report.report_uri = mlflow_registry.log_run_artifacts(settings, run_id, out, artifact_path)
    numeric = {k.replace(".", "_"): v for k, v in report.evidence.items() if v is not None and np.isfinite(v)}
    mlflow_registry.log_run_metrics(settings, run_id, numeric)
    mlflow_registry.set_version_tags(
        settings,
        report.version,
        decision
        | {
            "gate.evidence": json.dumps(report.evidence),
            "gate.golden_md5": report.golden_md5 or "",
            "gate.schema": EVIDENCE_SCHEMA,
            "gate.report": f"{report.report_uri}/report.html",
        },
    )
