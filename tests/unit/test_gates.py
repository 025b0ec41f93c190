from pathlib import Path

from lightbox.settings import DEFECT_TAGS, Settings
from pipelines.gates import decide, evaluate_gates, golden_checks, regression_checks


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


RUN = {"test_score_srocc": 0.9, "test_score_mae": 0.05, "test_tags_map": 0.9}


def _good_evidence() -> dict[str, float]:
    ev = {
        "serving.loads": 1.0,
        "serving.signature": 1.0,
        "serving.batch_latency_ms": 100.0,
        "golden.score_srocc": 0.8,
        "golden.score_mae": 0.1,
        "golden.tags_map": 0.7,
        "golden.tags_ece": 0.05,
        "behaviour.invariance_max_delta": 0.01,
        "behaviour.direction_pass_rate": 1.0,
        "behaviour.min_functionality_pass_rate": 1.0,
    }
    return ev | {f"golden.ap.{t}": 0.8 for t in DEFECT_TAGS} | {"golden.ap.synthetic": 0.9}


def test_full_verdict_passes_on_complete_good_evidence_without_a_champion(tmp_path: Path) -> None:
    v = decide(_good_evidence(), {}, RUN, None, None, _settings(tmp_path))
    assert v.passed, v.summary()
    assert any("first promotion" in n for n in v.notes)
    assert "golden.ap.synthetic" in {c.name for c in v.checks}


def test_a_missing_defect_ap_or_an_unloadable_model_fails(tmp_path: Path) -> None:
    ev = _good_evidence()
    del ev["golden.ap.blurry"]
    v = decide(ev, {}, RUN, None, None, _settings(tmp_path))
    assert v.reasons == ["golden.ap.blurry = missing (needs >= 0.1)"]

    only_load_failure = {"serving.loads": 0.0}
    v = decide(only_load_failure, {"serving.loads": "boom"}, RUN, None, None, _settings(tmp_path))
    assert not v.passed
    assert v.reasons[0] == "serving.loads = 0.0000 (needs >= 1): boom"
    assert any(r.startswith("golden.score_srocc = missing") for r in v.reasons)


def test_per_tag_floor_and_ece_ceiling(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path, gate_golden_min_tag_ap=0.5, gate_golden_max_ece=0.1)
    ev = _good_evidence() | {"golden.ap.noisy": 0.3, "golden.tags_ece": 0.2}
    failed = {c.name for c in golden_checks(ev, s) if not c.passed}
    assert failed == {"golden.ap.noisy", "golden.tags_ece"}


def test_regression_against_the_champion(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path, gate_regression_tolerance=0.02)
    champion = _good_evidence() | {"golden.score_srocc": 0.85, "golden.score_mae": 0.05}
    checks, notes = regression_checks(_good_evidence(), champion, "3", s)
    failed = {c.name: c for c in checks if not c.passed}
    assert set(failed) == {"regression.score_srocc", "regression.score_mae"}
    assert failed["regression.score_srocc"].threshold == 0.83
    assert "champion v3 = 0.8500" in failed["regression.score_srocc"].describe()
    assert notes == ["compared with champion v3"]
    # Within tolerance passes; a champion without numbers is missing evidence.
    near = _good_evidence() | {"golden.score_srocc": 0.79}
    assert all(c.passed for c in regression_checks(near, _good_evidence(), "3", s)[0])
    assert not any(c.passed for c in regression_checks(_good_evidence(), {}, "3", s)[0])


def test_no_checks_is_no_pass(tmp_path: Path) -> None:
    from pipelines.gates import GateVerdict

    assert not GateVerdict().passed and GateVerdict().reasons == ["no checks ran: no evidence"]
