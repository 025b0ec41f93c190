from pathlib import Path

from lightbox.settings import Settings
from pipelines.gates import evaluate_gates


def _settings(tmp_path: Path) -> Settings:
    return Settings(project_dir=tmp_path, gate_min_srocc=0.5, gate_max_mae=0.2, gate_min_map=0.4)


def test_passes_when_every_metric_meets_its_threshold(tmp_path: Path) -> None:
    v = evaluate_gates(
        {"test_score_srocc": 0.6, "test_score_mae": 0.1, "test_tags_map": 0.5}, _settings(tmp_path)
    )
    assert v.passed and v.reasons == []


def test_fails_with_a_reason_per_failing_check(tmp_path: Path) -> None:
    v = evaluate_gates(
        {"test_score_srocc": 0.4, "test_score_mae": 0.3, "test_tags_map": 0.5}, _settings(tmp_path)
    )
    assert not v.passed
    assert len(v.reasons) == 2
    assert "test_score_srocc = 0.4000 (needs >= 0.5)" in v.reasons
    assert "FAIL test_score_mae" in v.summary()


def test_missing_evidence_never_passes(tmp_path: Path) -> None:
    v = evaluate_gates({"test_score_srocc": 0.9, "test_score_mae": 0.0}, _settings(tmp_path))
    assert not v.passed
    assert v.reasons == ["test_tags_map = missing (needs >= 0.4)"]
