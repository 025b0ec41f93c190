"""Model quality gates: pure comparisons of a run's metrics against thresholds from settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from lightbox.settings import Settings


@dataclass(frozen=True)
class GateCheck:
    name: str
    value: float | None
    threshold: float
    op: str  # ">=" or "<="

    @property
    def passed(self) -> bool:
        # Missing evidence never passes.
        if self.value is None:
            return False
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold

    def describe(self) -> str:
        got = "missing" if self.value is None else f"{self.value:.4f}"
        return f"{self.name} = {got} (needs {self.op} {self.threshold})"


@dataclass(frozen=True)
class GateVerdict:
    checks: list[GateCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [c.describe() for c in self.checks if not c.passed]

    def summary(self) -> str:
        lines = [("PASS " if c.passed else "FAIL ") + c.describe() for c in self.checks]
        return "\n".join(lines)


def evaluate_gates(metrics: dict[str, float], settings: Settings) -> GateVerdict:
    return GateVerdict(
        checks=[
            GateCheck("test_score_srocc", metrics.get("test_score_srocc"), settings.gate_min_srocc, ">="),
            GateCheck("test_score_mae", metrics.get("test_score_mae"), settings.gate_max_mae, "<="),
            GateCheck("test_tags_map", metrics.get("test_tags_map"), settings.gate_min_map, ">="),
        ]
    )
