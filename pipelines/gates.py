"""Model quality gates: pure comparisons of recorded evidence against thresholds from settings.

Evidence is a flat ``{name: number}`` map (``golden.score_srocc``, ``golden.ap.blurry``,
``behaviour.direction_pass_rate``, ``serving.batch_latency_ms``, ...) measured by
pipelines.validate_model; this module only decides. A check whose number is missing fails, and a
verdict with no checks fails: the gate never passes on missing evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from lightbox.settings import DEFECT_TAGS, Settings

Evidence = Mapping[str, float | None]

# Golden metrics compared with the champion: name -> direction in which bigger is better.
REGRESSION_METRICS: Mapping[str, bool] = {
    "golden.score_srocc": True,
    "golden.score_mae": False,
    "golden.tags_map": True,
    "golden.tags_ece": False,
}


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
    notes: list[str] = field(default_factory=list)  # context that is not a check (e.g. no champion yet)

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


def evaluate_gates(metrics: Mapping[str, float], settings: Settings) -> GateVerdict:
    """Floors on the training run's own test-split metrics."""
    return GateVerdict(checks=test_split_checks(metrics, settings))


def test_split_checks(metrics: Mapping[str, float], settings: Settings) -> list[GateCheck]:
    return [
        GateCheck("test_score_srocc", metrics.get("test_score_srocc"), settings.gate_min_srocc, ">="),
        GateCheck("test_score_mae", metrics.get("test_score_mae"), settings.gate_max_mae, "<="),
        GateCheck("test_tags_map", metrics.get("test_tags_map"), settings.gate_min_map, ">="),
    ]


def golden_checks(ev: Evidence, settings: Settings) -> list[GateCheck]:
    """Floors on the golden set, including one per-tag AP floor for every tag with positives there."""
    checks = [
        GateCheck("golden.score_srocc", ev.get("golden.score_srocc"), settings.gate_golden_min_srocc, ">="),
        GateCheck("golden.score_mae", ev.get("golden.score_mae"), settings.gate_golden_max_mae, "<="),
        GateCheck("golden.tags_map", ev.get("golden.tags_map"), settings.gate_golden_min_map, ">="),
        GateCheck("golden.tags_ece", ev.get("golden.tags_ece"), settings.gate_golden_max_ece, "<="),
    ]
    # Every defect tag has positives in the golden grid by construction, so its AP must be present.
    ap_names = sorted({f"golden.ap.{t}" for t in DEFECT_TAGS} | {k for k in ev if k.startswith("golden.ap.")})
    checks += [GateCheck(n, ev.get(n), settings.gate_golden_min_tag_ap, ">=") for n in ap_names]
    return checks


def behaviour_checks(ev: Evidence, details: Mapping[str, str], settings: Settings) -> list[GateCheck]:
    return [
        GateCheck(
            "behaviour.invariance_max_delta",
            ev.get("behaviour.invariance_max_delta"),
            settings.gate_invariance_epsilon,
            "<=",
            details.get("behaviour.invariance_max_delta", ""),
        ),
        GateCheck(
            "behaviour.direction_pass_rate",
            ev.get("behaviour.direction_pass_rate"),
            settings.gate_direction_min_pass_rate,
            ">=",
            details.get("behaviour.direction_pass_rate", ""),
        ),
        GateCheck(
            "behaviour.min_functionality_pass_rate",
            ev.get("behaviour.min_functionality_pass_rate"),
            settings.gate_min_functionality_pass_rate,
            ">=",
            details.get("behaviour.min_functionality_pass_rate", ""),
        ),
    ]


def serving_checks(ev: Evidence, details: Mapping[str, str], settings: Settings) -> list[GateCheck]:
    return [
        GateCheck("serving.loads", ev.get("serving.loads"), 1.0, ">=", details.get("serving.loads", "")),
        GateCheck(
            "serving.signature", ev.get("serving.signature"), 1.0, ">=", details.get("serving.signature", "")
        ),
        GateCheck(
            "serving.batch_latency_ms",
            ev.get("serving.batch_latency_ms"),
            settings.gate_max_batch_latency_ms,
            "<=",
            f"batch of {settings.gate_latency_batch_size} on this machine",
        ),
    ]


def regression_checks(
    ev: Evidence, champion: Evidence | None, champion_version: str | None, settings: Settings
) -> tuple[list[GateCheck], list[str]]:
    """No regression beyond the tolerance against the champion's numbers on the same golden set.

    No champion at all is the first promotion: nothing to compare, said in a note. A champion whose
    numbers are missing is missing evidence: the checks fail.
    """
    if champion_version is None:
        return [], ["no champion yet: regression checks skipped (first promotion)"]
    tol = settings.gate_regression_tolerance
    checks = []
    for name, higher_is_better in REGRESSION_METRICS.items():
        ref = None if champion is None else champion.get(name)
        threshold = None if ref is None else (ref - tol if higher_is_better else ref + tol)
        checks.append(
            GateCheck(
                f"regression.{name.removeprefix('golden.')}",
                ev.get(name),
                threshold,
                ">=" if higher_is_better else "<=",
                f"champion v{champion_version} = {'missing' if ref is None else f'{ref:.4f}'}, "
                f"tolerance {tol}",
            )
        )
    return checks, [f"compared with champion v{champion_version}"]


def decide(
    ev: Evidence,
    details: Mapping[str, str],
    run_metrics: Mapping[str, float],
    champion: Evidence | None,
    champion_version: str | None,
    settings: Settings,
) -> GateVerdict:
    """The full verdict: serving fitness, test-split floors, golden floors, behaviour, no regression."""
    reg, notes = regression_checks(ev, champion, champion_version, settings)
    checks = (
        serving_checks(ev, details, settings)
        + test_split_checks(run_metrics, settings)
        + golden_checks(ev, settings)
        + behaviour_checks(ev, details, settings)
        + reg
    )
    return GateVerdict(checks=checks, notes=notes)
