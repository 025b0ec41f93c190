"""Model quality gates: pure comparisons of recorded evidence against thresholds from settings.

Evidence is a flat ``{name: number}`` map (``golden.score_srocc``, ``golden.ap.<tag>``,
``behaviour.direction_pass_rate``, ``serving.batch_latency_ms``, ...) measured by
pipelines.validate_model; this module only decides. Score numbers are on the normalised scale (a
fraction of the model's score range), so one threshold fits a 0..1 score and a 1..10 rating alike.

Which checks apply follows from what the model answers (its ``ModelLabels``: a tags-only model has
no score checks, a score-only model no tag checks) and from what the golden set supports; every check
left out is named in a note with the reason. A check whose number is missing fails, and a verdict with
no checks fails: the gate never passes on missing evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from lightbox.settings import Settings

Evidence = Mapping[str, float | None]

# Golden metrics compared with the champion: name -> direction in which bigger is better.
SCORE_REGRESSION_METRICS: Mapping[str, bool] = {"golden.score_srocc": True, "golden.score_mae": False}
TAG_REGRESSION_METRICS: Mapping[str, bool] = {"golden.tags_map": True, "golden.tags_ece": False}
# Evidence that describes the golden set rather than the model (recorded by validate_model).
GRID_KEY = "golden.distortion_grid"  # 1.0 when the golden set is the synthetic distortion grid
POSITIVES_PREFIX = "golden.positives."  # golden.positives.<tag>: golden images carrying the tag
AP_PREFIX = "golden.ap."
# An int8 candidate's graph judged against its own fp32 weights (pipelines.validate_model.runtime_check):
# present only for such a version, and then a gate.
INT8_PREFIX = "export.int8."
INT8_VERIFIED = INT8_PREFIX + "verified"


@dataclass(frozen=True)
class ModelLabels:
    """What a model answers: its tag names and its score scale, as logged in its registry metadata."""

    tag_names: tuple[str, ...]
    score_range: tuple[float, float] | None  # None: no score head worth judging (tags-only model)
    score_name: str | None = None

    @property
    def has_score(self) -> bool:
        return self.score_range is not None

    @property
    def has_tags(self) -> bool:
        return bool(self.tag_names)

    def same_labels(self, other: ModelLabels) -> bool:
        """Whether two models answer the same question: same tags, same score scale."""
        return self.tag_names == other.tag_names and self.score_range == other.score_range

    def describe(self) -> str:
        tags = f"tags [{', '.join(self.tag_names)}]" if self.tag_names else "no tags"
        if self.score_range is None:
            return f"{tags}, no score"
        low, high = self.score_range
        return f"{tags}, score {self.score_name or 'score'} on {low:g}..{high:g}"

    def to_dict(self) -> dict:
        return {
            "tag_names": list(self.tag_names),
            "score_range": list(self.score_range) if self.score_range else None,
            "score_name": self.score_name,
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping) -> ModelLabels:
        """From a model version's MLflow metadata (``tag_names``, ``has_score``, ``score_range``,
        ``score_name``). ValueError when the metadata predates label specs or contradicts itself."""
        missing = [k for k in ("tag_names", "has_score") if k not in metadata]
        if missing:
            raise ValueError(
                f"the model's metadata has no {', '.join(missing)}: it was logged before datasets "
                "declared their labels; retrain it"
            )
        tags = metadata["tag_names"]
        names = tuple(tags.split(",") if isinstance(tags, str) else tags)
        names = tuple(n for n in names if n)  # "" is how a comma-joined empty list reads back
        rng = metadata.get("score_range")
        if _truthy(metadata["has_score"]) != (rng is not None):
            raise ValueError(
                f"the model's metadata says has_score={metadata['has_score']} with score_range {rng}"
            )
        score_range = None if rng is None else (float(rng[0]), float(rng[1]))
        if score_range is not None and not score_range[0] < score_range[1]:
            raise ValueError(f"the model's score range {list(score_range)} is empty")
        return cls(names, score_range, metadata.get("score_name"))


def _truthy(value: object) -> bool:
    # MLflow metadata round-trips through YAML; a hand-logged model may carry "true"/"false" strings.
    return value.strip().lower() == "true" if isinstance(value, str) else bool(value)


@dataclass(frozen=True)
class Baseline:
    """The champion the candidate is compared with: its version, its labels (None: not recorded) and
    its golden numbers (None: not measured, e.g. because its labels differ)."""

    version: str
    labels: ModelLabels | None
    evidence: Evidence | None = None


@dataclass(frozen=True)
class GateCheck:
    name: str
    value: float | None
    threshold: float | None
    op: str  # ">=" or "<="
    detail: str = ""  # why, in words (failing cases, what was compared)

    @property
    def passed(self) -> bool:
        # Missing evidence (or a missing reference to compare with) never passes.
        if self.value is None or self.threshold is None or self.value != self.value:  # NaN
            return False
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold

    def describe(self) -> str:
        got = "missing" if self.value is None else f"{self.value:.4f}"
        need = "missing" if self.threshold is None else f"{self.threshold:.4g}"
        text = f"{self.name} = {got} (needs {self.op} {need})"
        return f"{text}: {self.detail}" if self.detail and not self.passed else text


@dataclass(frozen=True)
class GateVerdict:
    checks: list[GateCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was skipped and why, what was compared

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        if not self.checks:
            return ["no checks ran: no evidence"]
        return [c.describe() for c in self.checks if not c.passed]

    def summary(self) -> str:
        lines = [("PASS " if c.passed else "FAIL ") + c.describe() for c in self.checks]
        return "\n".join(lines + [f"NOTE {n}" for n in self.notes])

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "checks": [asdict(c) | {"passed": c.passed} for c in self.checks],
            "notes": list(self.notes),
        }


Checks = tuple[list[GateCheck], list[str]]  # (checks, notes)


def evaluate_gates(metrics: Mapping[str, float], labels: ModelLabels, settings: Settings) -> GateVerdict:
    """Floors on the training run's own test-split metrics."""
    checks, notes = test_split_checks(metrics, labels, settings)
    return GateVerdict(checks=checks, notes=notes)


def test_split_checks(metrics: Mapping[str, float], labels: ModelLabels, settings: Settings) -> Checks:
    """test_score_mae is read as a fraction of the score range (training measures on the normalised
    scale the score head learns)."""
    checks: list[GateCheck] = []
    if labels.has_score:
        checks += [
            GateCheck("test_score_srocc", metrics.get("test_score_srocc"), settings.gate_min_srocc, ">="),
            GateCheck("test_score_mae", metrics.get("test_score_mae"), settings.gate_max_mae, "<="),
        ]
    if labels.has_tags:
        checks.append(GateCheck("test_tags_map", metrics.get("test_tags_map"), settings.gate_min_map, ">="))
    return checks, []


def golden_checks(ev: Evidence, labels: ModelLabels, settings: Settings) -> Checks:
    """Floors on the golden set, with an AP floor for every tag that has enough golden examples."""
    checks: list[GateCheck] = []
    notes: list[str] = []
    if labels.has_score:
        checks += [
            GateCheck(
                "golden.score_srocc", ev.get("golden.score_srocc"), settings.gate_golden_min_srocc, ">="
            ),
            GateCheck("golden.score_mae", ev.get("golden.score_mae"), settings.gate_golden_max_mae, "<="),
        ]
    if labels.has_tags:
        checks += [
            GateCheck("golden.tags_map", ev.get("golden.tags_map"), settings.gate_golden_min_map, ">="),
            GateCheck("golden.tags_ece", ev.get("golden.tags_ece"), settings.gate_golden_max_ece, "<="),
        ]
        ap_checks, ap_notes = tag_ap_checks(ev, labels.tag_names, settings)
        checks += ap_checks
        notes += ap_notes
    return checks, notes


def tag_ap_checks(ev: Evidence, tag_names: Sequence[str], settings: Settings) -> Checks:
    """One AP floor per tag with at least gate_min_golden_tag_examples golden positives.

    The positives are counted on the golden set (evidence ``golden.positives.<tag>``), so a tag that
    has enough examples must have its AP: a missing AP there fails. Too few examples make AP noise;
    those tags are listed in a note, never judged.
    """
    need = settings.gate_min_golden_tag_examples
    checks, few = [], []
    for tag in tag_names:
        positives = ev.get(f"{POSITIVES_PREFIX}{tag}")
        if positives is None:
            continue  # the golden set was not measured: golden.tags_map fails as missing already
        if positives >= need:
            checks.append(
                GateCheck(
                    f"{AP_PREFIX}{tag}",
                    ev.get(f"{AP_PREFIX}{tag}"),
                    settings.gate_golden_min_tag_ap,
                    ">=",
                    f"{int(positives)} golden positives",
                )
            )
        else:
            few.append(f"{tag} ({int(positives)})")
    notes = []
    if few:
        notes.append(
            f"no per-tag AP floor for tags with fewer than {need} golden examples "
            f"(gate_min_golden_tag_examples): {', '.join(few)}"
        )
    return checks, notes


def _check(name: str, ev: Evidence, details: Mapping[str, str], threshold: float, op: str) -> GateCheck:
    return GateCheck(name, ev.get(name), threshold, op, details.get(name, ""))


def behaviour_checks(
    ev: Evidence, details: Mapping[str, str], labels: ModelLabels, settings: Settings
) -> Checks:
    """The behavioural checks settings.gate_behaviour asks for and the golden set supports.

    "auto": resize/JPEG invariance on any golden set (score models), the direction and
    minimum-functionality checks on the synthetic distortion grid; "on" adds "blur lowers the score"
    on a golden set without the grid (on the grid the direction check already covers blur);
    "off": none.
    """
    mode = settings.gate_behaviour
    if mode == "off":
        return [], ["behavioural checks off (gate_behaviour=off)"]
    grid = ev.get(GRID_KEY) == 1.0
    checks: list[GateCheck] = []
    notes: list[str] = []
    if labels.has_score:
        checks.append(
            _check("behaviour.invariance_max_delta", ev, details, settings.gate_invariance_epsilon, "<=")
        )
        if grid:
            checks.append(
                _check(
                    "behaviour.direction_pass_rate", ev, details, settings.gate_direction_min_pass_rate, ">="
                )
            )
        elif mode == "on":
            checks.append(
                _check(
                    "behaviour.blur_lowers_score_pass_rate",
                    ev,
                    details,
                    settings.gate_direction_min_pass_rate,
                    ">=",
                )
            )
        else:
            notes.append(
                "no direction check: the golden set has no distortion grid "
                "(gate_behaviour=on adds 'blur lowers the score' on any scored golden set)"
            )
    else:
        notes.append("tags-only model: no score behaviour checks (invariance, direction, blur)")
    if grid and labels.has_tags:
        checks.append(
            _check(
                "behaviour.min_functionality_pass_rate",
                ev,
                details,
                settings.gate_min_functionality_pass_rate,
                ">=",
            )
        )
    elif labels.has_tags:
        notes.append("no minimum-functionality check: it needs the synthetic set's distortion grid")
    return checks, notes


def serving_checks(ev: Evidence, details: Mapping[str, str], settings: Settings) -> list[GateCheck]:
    return [
        _check("serving.loads", ev, details, 1.0, ">="),
        _check("serving.signature", ev, details, 1.0, ">="),
        GateCheck(
            "serving.batch_latency_ms",
            ev.get("serving.batch_latency_ms"),
            settings.gate_max_batch_latency_ms,
            "<=",
            f"batch of {settings.gate_latency_batch_size} on this machine",
        ),
    ]


def regression_checks(
    ev: Evidence, labels: ModelLabels, baseline: Baseline | None, settings: Settings
) -> Checks:
    """No regression beyond the tolerance against the champion's numbers on the same golden set.

    No champion at all is the first promotion, and a champion trained on other labels (other tags or
    another score scale) answers another question: either way there is nothing to compare, said in a
    note, and the candidate is judged on the floors alone. A comparable champion whose numbers are
    missing is missing evidence: the checks fail.
    """
    if baseline is None:
        return [], ["no champion yet: regression checks skipped (first promotion)"]
    if baseline.labels is None or not baseline.labels.same_labels(labels):
        theirs = "labels not recorded" if baseline.labels is None else baseline.labels.describe()
        return [], [
            f"champion v{baseline.version} was trained on other labels ({theirs}; this model: "
            f"{labels.describe()}): no regression baseline, the first model of these labels is judged "
            "on the floors alone"
        ]
    metrics = {**(SCORE_REGRESSION_METRICS if labels.has_score else {})}
    metrics |= TAG_REGRESSION_METRICS if labels.has_tags else {}
    tol = settings.gate_regression_tolerance
    checks = []
    for name, higher_is_better in metrics.items():
        short = name.removeprefix("golden.")
        ref = None if baseline.evidence is None else baseline.evidence.get(name)
        threshold = None if ref is None else (ref - tol if higher_is_better else ref + tol)
        detail = (
            # Not the candidate's fault, and nothing a new candidate can fix: say how to get the number.
            f"champion v{baseline.version} has no recorded golden evidence for {short} (its last gates "
            f"run failed or never ran): run `lightbox gates --version {baseline.version}`, then promote "
            "again"
            if ref is None
            else f"champion v{baseline.version} = {ref:.4f}, tolerance {tol}"
        )
        checks.append(
            GateCheck(
                f"regression.{short}", ev.get(name), threshold, ">=" if higher_is_better else "<=", detail
            )
        )
    return checks, [f"compared with champion v{baseline.version}"]


def what_is_judged(labels: ModelLabels) -> list[str]:
    """Notes for the checks a model's own labels rule out."""
    if not labels.has_score and not labels.has_tags:
        return ["the model declares neither a score nor tags: nothing to judge it on"]
    if not labels.has_score:
        return ["tags-only model (no score labels): score checks skipped"]
    if not labels.has_tags:
        return ["score-only model (no tags): tag checks skipped"]
    return []


SHADOW_PREFIX = "shadow."  # the version tags the server's shadow traffic records (serving.canary)


def shadow_checks(tags: Mapping[str, str], labels: ModelLabels | None, settings: Settings) -> Checks:
    """What `lightbox promote` requires of the candidate's shadow traffic (its agreement with the
    champion on real requests, recorded by the server as ``shadow.*`` version tags). Nothing when
    ``promote_min_shadow_samples`` is 0 (the default): no shadow requirement.

    Agreement is not accuracy: a challenger that is better than the champion also disagrees with it.
    The floors say how different a candidate may be before a person looks at it. Tags compare by name:
    the tags only one side answers (renamed, new, dropped) are not compared, and named in a note."""
    if settings.promote_min_shadow_samples <= 0:
        return [], []

    def number(key: str) -> float | None:
        raw = tags.get(SHADOW_PREFIX + key)
        try:
            return None if raw is None else float(raw)
        except ValueError:
            return None

    samples = number("samples")
    where = "shadow traffic recorded on the version (serve with LIGHTBOX_SERVE_SHADOW_FRACTION > 0)"
    checks = [GateCheck("shadow.samples", samples, float(settings.promote_min_shadow_samples), ">=", where)]
    if labels is None or labels.has_score:
        # Samples without an SROCC: the server left it out because it was undefined (scores constant over
        # the window), which is no evidence of agreement either way.
        undefined = (
            "undefined over the recorded shadow window (the scores did not vary: the same image shadowed "
            "again and again?); shadow more varied traffic"
        )
        srocc_where = undefined if samples is not None and samples > 0 else where
        checks.append(
            GateCheck(
                "shadow.score_srocc",
                number("score_srocc"),
                settings.promote_min_shadow_srocc,
                ">=",
                srocc_where,
            )
        )
    compared = tags.get(SHADOW_PREFIX + "tags_compared", "")
    alone = tags.get(SHADOW_PREFIX + "tags_not_compared", "")
    if labels is None or labels.has_tags:
        none_shared = "the challenger shares no tag with the champion: no tag agreement to measure"
        checks.append(
            GateCheck(
                "shadow.tag_agreement_min",
                number("tag_agreement_min"),
                settings.promote_min_shadow_tag_agreement,
                ">=",
                none_shared if compared == "-" else where,
            )
        )
    notes = [f"shadow requirement: at least {settings.promote_min_shadow_samples} shadowed images"]
    if alone not in ("", "-"):
        notes.append(
            f"shadow tag agreement covers [{compared}] only; one model's alone, not compared: [{alone}]"
        )
    return checks, notes


def decide(
    ev: Evidence,
    details: Mapping[str, str],
    run_metrics: Mapping[str, float],
    labels: ModelLabels | None,
    baseline: Baseline | None,
    settings: Settings,
    notes: Sequence[str] = (),
) -> GateVerdict:
    """The full verdict: serving fitness, test-split floors, golden floors, behaviour, no regression.

    ``labels`` None (metadata without a label spec, or a model that does not load): only the serving
    checks and a failing ``model.labels`` check, since which checks apply cannot be known.
    """
    checks = serving_checks(ev, details, settings)
    if INT8_VERIFIED in ev:  # an int8 candidate: its graph must answer as its fp32 weights do
        checks.append(_check(INT8_VERIFIED, ev, details, 1.0, ">="))
    all_notes = list(notes)
    if labels is None:
        why = details.get("model.labels") or "the model's labels could not be read"
        checks.append(GateCheck("model.labels", None, 1.0, ">=", why))
        return GateVerdict(checks=checks, notes=all_notes)
    all_notes += what_is_judged(labels)
    if not labels.has_score and not labels.has_tags:
        # Serving fitness alone would pass a model that answers nothing.
        nothing = "the model declares neither a score nor tags"
        checks.append(GateCheck("model.labels", 0.0, 1.0, ">=", nothing))
        return GateVerdict(checks=checks, notes=all_notes)
    for part_checks, part_notes in (
        test_split_checks(run_metrics, labels, settings),
        golden_checks(ev, labels, settings),
        behaviour_checks(ev, details, labels, settings),
        regression_checks(ev, labels, baseline, settings),
    ):
        checks += part_checks
        all_notes += part_notes
    return GateVerdict(checks=checks, notes=all_notes)
