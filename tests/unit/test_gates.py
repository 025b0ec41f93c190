from pathlib import Path

import pytest

from lightbox.settings import Settings
from pipelines.gates import (
    Baseline,
    GateVerdict,
    ModelLabels,
    behaviour_checks,
    decide,
    evaluate_gates,
    golden_checks,
    regression_checks,
    shadow_checks,
)

TAGS = ("blurry", "dog", "sunset")
BOTH = ModelLabels(TAGS, (1.0, 10.0), "rating")
TAGS_ONLY = ModelLabels(TAGS, None)
SCORE_ONLY = ModelLabels((), (0.0, 1.0), "quality")


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(project_dir=tmp_path, gate_min_srocc=0.5, gate_max_mae=0.2, gate_min_map=0.4, **kw)


def test_passes_when_every_metric_meets_its_threshold(tmp_path: Path) -> None:
    v = evaluate_gates(
        {"test_score_srocc": 0.6, "test_score_mae": 0.1, "test_tags_map": 0.5}, BOTH, _settings(tmp_path)
    )
    assert v.passed and v.reasons == []


def test_fails_with_a_reason_per_failing_check(tmp_path: Path) -> None:
    v = evaluate_gates(
        {"test_score_srocc": 0.4, "test_score_mae": 0.3, "test_tags_map": 0.5}, BOTH, _settings(tmp_path)
    )
    assert not v.passed
    assert len(v.reasons) == 2
    assert "test_score_srocc = 0.4000 (needs >= 0.5)" in v.reasons
    assert "FAIL test_score_mae" in v.summary()


def test_missing_evidence_never_passes(tmp_path: Path) -> None:
    v = evaluate_gates({"test_score_srocc": 0.9, "test_score_mae": 0.0}, BOTH, _settings(tmp_path))
    assert not v.passed
    assert v.reasons == ["test_tags_map = missing (needs >= 0.4)"]


RUN = {"test_score_srocc": 0.9, "test_score_mae": 0.05, "test_tags_map": 0.9}


def _good_evidence(positives: dict[str, float] | None = None) -> dict[str, float]:
    """An imported (non-grid) golden set where every tag has 5 positives, measured well."""
    positives = positives or dict.fromkeys(TAGS, 5.0)
    ev = {
        "serving.loads": 1.0,
        "serving.signature": 1.0,
        "serving.batch_latency_ms": 100.0,
        "golden.distortion_grid": 0.0,
        "golden.score_srocc": 0.8,
        "golden.score_mae": 0.1,
        "golden.tags_map": 0.7,
        "golden.tags_ece": 0.05,
        "behaviour.invariance_max_delta": 0.01,
    }
    ev |= {f"golden.positives.{t}": n for t, n in positives.items()}
    return ev | {f"golden.ap.{t}": 0.8 for t, n in positives.items() if n >= 3}


def _names(v: GateVerdict) -> set[str]:
    return {c.name for c in v.checks}


def test_full_verdict_passes_on_complete_good_evidence_without_a_champion(tmp_path: Path) -> None:
    v = decide(_good_evidence(), {}, RUN, BOTH, None, _settings(tmp_path))
    assert v.passed, v.summary()
    assert any("first promotion" in n for n in v.notes)
    assert {f"golden.ap.{t}" for t in TAGS} <= _names(v)


def test_an_int8_candidate_must_have_its_graph_verified(tmp_path: Path) -> None:
    """Only a version whose evidence carries export.int8.* (an int8 candidate) is judged on it, and a
    refused int8 graph fails the version; an fp32 version's ONNX check is no gate."""
    settings = _settings(tmp_path)
    assert "export.int8.verified" not in _names(decide(_good_evidence(), {}, RUN, BOTH, None, settings))
    why = {"export.int8.verified": "refused: int8 against its fp32 weights: max metric delta 0.3 (...)"}
    refused = decide(_good_evidence() | {"export.int8.verified": 0.0}, why, RUN, BOTH, None, settings)
    assert not refused.passed
    assert refused.reasons == ["export.int8.verified = 0.0000 (needs >= 1): " + why["export.int8.verified"]]
    verified = decide(_good_evidence() | {"export.int8.verified": 1.0}, {}, RUN, BOTH, None, settings)
    assert verified.passed and "export.int8.verified" in _names(verified)
    fp32_refused = _good_evidence() | {"export.onnx.verified": 0.0}
    assert decide(fp32_refused, {}, RUN, BOTH, None, settings).passed


def test_per_tag_ap_floor_only_for_tags_with_enough_golden_examples(tmp_path: Path) -> None:
    s = _settings(tmp_path, gate_min_golden_tag_examples=3, gate_golden_min_tag_ap=0.5)
    # sunset has 2 positives: no floor, said in a note; dog has 3: its AP is judged (and fails).
    ev = _good_evidence({"blurry": 10.0, "dog": 3.0, "sunset": 2.0}) | {"golden.ap.dog": 0.2}
    checks, notes = golden_checks(ev, BOTH, s)
    names = {c.name for c in checks}
    assert {"golden.ap.blurry", "golden.ap.dog"} <= names and "golden.ap.sunset" not in names
    assert [c.name for c in checks if not c.passed] == ["golden.ap.dog"]
    assert len(notes) == 1 and "sunset (2)" in notes[0] and "fewer than 3" in notes[0]
    # A tag with enough examples must have its AP: missing fails.
    del ev["golden.ap.blurry"]
    failed = [c.describe() for c in golden_checks(ev, BOTH, s)[0] if not c.passed]
    assert "golden.ap.blurry = missing (needs >= 0.5): 10 golden positives" in failed
    # Raising the bar to 4 examples drops the dog floor.
    checks, _ = golden_checks(ev, BOTH, _settings(tmp_path, gate_min_golden_tag_examples=4))
    assert "golden.ap.dog" not in {c.name for c in checks}


def test_mae_is_judged_as_a_fraction_of_the_score_range(tmp_path: Path) -> None:
    # golden.score_mae is recorded normalised: 0.15 of a 1..10 range (1.35 rating points) is within
    # a 0.2 ceiling, whatever the scale; 0.25 is not.
    s = _settings(tmp_path, gate_golden_max_mae=0.2)
    for mae, ok in ((0.15, True), (0.25, False)):
        checks, _ = golden_checks(_good_evidence() | {"golden.score_mae": mae}, BOTH, s)
        (check,) = [c for c in checks if c.name == "golden.score_mae"]
        assert check.passed is ok and check.threshold == 0.2


def test_tags_only_model_has_no_score_checks_and_says_so(tmp_path: Path) -> None:
    ev = {k: v for k, v in _good_evidence().items() if "score" not in k and "invariance" not in k}
    v = decide(ev, {}, {"test_tags_map": 0.9}, TAGS_ONLY, None, _settings(tmp_path))
    assert v.passed, v.summary()
    assert not any("score" in n or "invariance" in n for n in _names(v))
    assert "golden.tags_map" in _names(v)
    assert any("tags-only model" in n and "score checks skipped" in n for n in v.notes)


def test_score_only_model_has_no_tag_checks_and_says_so(tmp_path: Path) -> None:
    ev = {k: v for k, v in _good_evidence().items() if "tags" not in k and ".ap." not in k}
    ev = {k: v for k, v in ev.items() if "positives" not in k}
    v = decide(
        ev, {}, {"test_score_srocc": 0.9, "test_score_mae": 0.05}, SCORE_ONLY, None, _settings(tmp_path)
    )
    assert v.passed, v.summary()
    assert not any("tags" in n or ".ap." in n for n in _names(v))
    assert {"golden.score_srocc", "golden.score_mae", "test_score_mae"} <= _names(v)
    assert any("score-only model" in n and "tag checks skipped" in n for n in v.notes)
    # Its score evidence is still required.
    del ev["golden.score_srocc"]
    assert decide(ev, {}, RUN, SCORE_ONLY, None, _settings(tmp_path)).reasons == [
        "golden.score_srocc = missing (needs >= 0.5)"
    ]


def test_a_model_that_answers_nothing_or_records_no_labels_fails(tmp_path: Path) -> None:
    nothing = decide(_good_evidence(), {}, RUN, ModelLabels((), None), None, _settings(tmp_path))
    assert not nothing.passed and any("neither a score nor tags" in r for r in nothing.reasons)
    unknown = decide(
        _good_evidence(), {"model.labels": "logged before label specs"}, RUN, None, None, _settings(tmp_path)
    )
    assert unknown.reasons == ["model.labels = missing (needs >= 1): logged before label specs"]


def test_an_unloadable_model_fails(tmp_path: Path) -> None:
    v = decide({"serving.loads": 0.0}, {"serving.loads": "boom"}, RUN, BOTH, None, _settings(tmp_path))
    assert not v.passed
    assert v.reasons[0] == "serving.loads = 0.0000 (needs >= 1): boom"
    assert any(r.startswith("golden.score_srocc = missing") for r in v.reasons)


def test_ece_ceiling(tmp_path: Path) -> None:
    s = _settings(tmp_path, gate_golden_max_ece=0.1)
    failed = {
        c.name for c in golden_checks(_good_evidence() | {"golden.tags_ece": 0.2}, BOTH, s)[0] if not c.passed
    }
    assert failed == {"golden.tags_ece"}


def test_regression_against_a_champion_of_the_same_labels(tmp_path: Path) -> None:
    s = _settings(tmp_path, gate_regression_tolerance=0.02)
    champion = _good_evidence() | {"golden.score_srocc": 0.85, "golden.score_mae": 0.05}
    checks, notes = regression_checks(_good_evidence(), BOTH, Baseline("3", BOTH, champion), s)
    failed = {c.name: c for c in checks if not c.passed}
    assert set(failed) == {"regression.score_srocc", "regression.score_mae"}
    assert failed["regression.score_srocc"].threshold == pytest.approx(0.83)
    assert "champion v3 = 0.8500" in failed["regression.score_srocc"].describe()
    assert notes == ["compared with champion v3"]
    # Within tolerance passes; a champion without numbers is missing evidence.
    near = _good_evidence() | {"golden.score_srocc": 0.79}
    assert all(c.passed for c in regression_checks(near, BOTH, Baseline("3", BOTH, _good_evidence()), s)[0])
    unmeasured = regression_checks(_good_evidence(), BOTH, Baseline("3", BOTH, {}), s)[0]
    assert not any(c.passed for c in unmeasured)
    # ... and the refusal says how to get the champion's number (its last gates run failed, say).
    tags_map = next(c for c in unmeasured if c.name == "regression.tags_map").describe()
    assert tags_map == (
        "regression.tags_map = 0.7000 (needs >= missing): champion v3 has no recorded golden evidence for "
        "tags_map (its last gates run failed or never ran): run `lightbox gates --version 3`, then promote "
        "again"
    )
    # Only what the model answers is compared.
    score_only, _ = regression_checks(_good_evidence(), SCORE_ONLY, Baseline("3", SCORE_ONLY, champion), s)
    assert {c.name for c in score_only} == {"regression.score_srocc", "regression.score_mae"}


@pytest.mark.parametrize(
    "theirs, said",
    [
        (ModelLabels(("blurry", "dog"), (1.0, 10.0), "rating"), "tags [blurry, dog]"),
        (ModelLabels(TAGS, (0.0, 1.0)), "on 0..1"),
        (None, "labels not recorded"),
    ],
)
def test_a_champion_of_other_labels_is_no_baseline(tmp_path: Path, theirs, said: str) -> None:
    # Far worse numbers than the candidate's: were they compared, every regression check would fail.
    bad = dict.fromkeys(_good_evidence(), 0.0)
    v = decide(_good_evidence(), {}, RUN, BOTH, Baseline("7", theirs, bad), _settings(tmp_path))
    assert v.passed, v.summary()
    assert not any(n.startswith("regression.") for n in _names(v))
    (note,) = [n for n in v.notes if "champion v7" in n]
    assert "trained on other labels" in note and said in note and "no regression baseline" in note
    assert "judged on the floors alone" in note


def test_behaviour_checks_follow_the_mode_and_the_golden_set(tmp_path: Path) -> None:
    grid = _good_evidence() | {"golden.distortion_grid": 1.0}
    imported = _good_evidence()

    def names(ev, labels, mode):
        checks, notes = behaviour_checks(ev, {}, labels, _settings(tmp_path, gate_behaviour=mode))
        return {c.name.removeprefix("behaviour.") for c in checks}, notes

    assert names(grid, BOTH, "auto")[0] == {
        "invariance_max_delta",
        "direction_pass_rate",
        "min_functionality_pass_rate",
    }
    checks, notes = names(imported, BOTH, "auto")
    assert checks == {"invariance_max_delta"} and any("no distortion grid" in n for n in notes)
    assert names(imported, BOTH, "on")[0] == {"invariance_max_delta", "blur_lowers_score_pass_rate"}
    # On the grid, the direction check covers blur already.
    assert "blur_lowers_score_pass_rate" not in names(grid, BOTH, "on")[0]
    assert names(grid, TAGS_ONLY, "auto")[0] == {"min_functionality_pass_rate"}
    assert names(grid, BOTH, "off") == (set(), ["behavioural checks off (gate_behaviour=off)"])
    # Required means a missing number fails.
    s = _settings(tmp_path, gate_behaviour="on")
    checks, _ = behaviour_checks(imported, {"behaviour.blur_lowers_score_pass_rate": "why"}, BOTH, s)
    (blur,) = [c for c in checks if c.name == "behaviour.blur_lowers_score_pass_rate"]
    assert not blur.passed and blur.describe().endswith(": why")


def test_no_checks_is_no_pass() -> None:
    assert not GateVerdict().passed and GateVerdict().reasons == ["no checks ran: no evidence"]


def test_model_labels_from_metadata() -> None:
    md = {"tag_names": ["a", "b"], "has_score": True, "score_range": [1, 5], "score_name": "stars"}
    labels = ModelLabels.from_metadata(md)
    assert labels == ModelLabels(("a", "b"), (1.0, 5.0), "stars")
    assert labels.describe() == "tags [a, b], score stars on 1..5"
    assert (
        ModelLabels.from_metadata({"tag_names": [], "has_score": True, "score_range": [0, 1]}).has_tags
        is False
    )
    tags_only = ModelLabels.from_metadata({"tag_names": ["a"], "has_score": False, "score_range": None})
    assert not tags_only.has_score and tags_only.describe() == "tags [a], no score"
    with pytest.raises(ValueError, match="logged before"):
        ModelLabels.from_metadata({"tag_names": ["a"]})
    with pytest.raises(ValueError, match="has_score=True"):
        ModelLabels.from_metadata({"tag_names": ["a"], "has_score": True, "score_range": None})


def test_no_shadow_requirement_by_default(tmp_path: Path) -> None:
    assert shadow_checks({}, BOTH, _settings(tmp_path)) == ([], [])


def test_the_shadow_requirement_reads_the_agreement_the_server_recorded(tmp_path: Path) -> None:
    settings = _settings(tmp_path, promote_min_shadow_samples=500)
    recorded = {"shadow.samples": "800", "shadow.score_srocc": "0.93", "shadow.tag_agreement_min": "0.95"}
    checks, notes = shadow_checks(recorded, BOTH, settings)
    verdict = GateVerdict(checks, notes)
    assert verdict.passed and [c.name for c in checks] == [
        "shadow.samples",
        "shadow.score_srocc",
        "shadow.tag_agreement_min",
    ]
    few = GateVerdict(*shadow_checks(recorded | {"shadow.samples": "120"}, BOTH, settings))
    assert few.reasons == [
        "shadow.samples = 120.0000 (needs >= 500): shadow traffic recorded on the version "
        "(serve with LIGHTBOX_SERVE_SHADOW_FRACTION > 0)"
    ]
    # Samples but no SROCC: the server found it undefined (constant scores), and the verdict says so.
    recorded_without_srocc = {k: v for k, v in recorded.items() if k != "shadow.score_srocc"}
    undefined = GateVerdict(*shadow_checks(recorded_without_srocc, BOTH, settings))
    assert undefined.reasons == [
        "shadow.score_srocc = missing (needs >= 0.8): undefined over the recorded shadow window (the "
        "scores did not vary: the same image shadowed again and again?); shadow more varied traffic"
    ]
    never = GateVerdict(*shadow_checks({}, BOTH, settings))  # never shadowed: every check missing
    assert not never.passed and len(never.reasons) == 3
    # Only what the model answers is required: a tags-only model has no score agreement.
    assert [c.name for c in shadow_checks(recorded, TAGS_ONLY, settings)[0]] == [
        "shadow.samples",
        "shadow.tag_agreement_min",
    ]


def test_the_shadow_verdict_names_the_tags_it_did_not_compare(tmp_path: Path) -> None:
    settings = _settings(tmp_path, promote_min_shadow_samples=500)
    recorded = {
        "shadow.samples": "800",
        "shadow.score_srocc": "0.93",
        "shadow.tag_agreement_min": "0.95",
        "shadow.tags_compared": "landscape",
        "shadow.tags_not_compared": "portrait,people,blurry",
    }
    verdict = GateVerdict(*shadow_checks(recorded, BOTH, settings))
    # A rename passes the floor on the tags both answer, but not silently.
    assert verdict.passed and verdict.notes[-1] == (
        "shadow tag agreement covers [landscape] only; one model's alone, not compared: "
        "[portrait,people,blurry]"
    )
    nothing = recorded | {"shadow.tags_compared": "-"}
    del nothing["shadow.tag_agreement_min"]
    assert GateVerdict(*shadow_checks(nothing, BOTH, settings)).reasons == [
        "shadow.tag_agreement_min = missing (needs >= 0.9): the challenger shares no tag with the champion: "
        "no tag agreement to measure"
    ]
