import numpy as np
import pytest

from training.metrics import (
    calibration_bins,
    expected_calibration_error,
    precision_recall_points,
    srocc_by_kind,
)


def test_ece_is_zero_when_confidence_matches_frequency() -> None:
    # 10 predictions at 0.3 of which 3 positive, 10 at 0.8 of which 8 positive.
    probs = np.array([0.3] * 10 + [0.8] * 10)
    labels = np.array([1] * 3 + [0] * 7 + [1] * 8 + [0] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)


def test_ece_of_an_overconfident_model() -> None:
    probs = np.full(10, 0.9)
    labels = np.array([1] * 5 + [0] * 5)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    conf, rate, count = calibration_bins(probs, labels)
    assert count[8] == 10 and rate[8] == pytest.approx(0.5) and np.isnan(conf[0])


def test_ece_handles_matrices_and_rejects_mismatched_shapes() -> None:
    assert expected_calibration_error(np.zeros((4, 3)), np.zeros((4, 3))) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="differ in size"):
        calibration_bins(np.zeros(3), np.zeros(4))


def test_precision_recall_points() -> None:
    recall, precision = precision_recall_points(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1]))
    assert recall.tolist() == [0.5, 0.5, 1.0]
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3])
    assert len(precision_recall_points(np.array([0.5]), np.array([0]))[0]) == 0


def test_srocc_by_kind_uses_pristine_as_anchor() -> None:
    dist = ["none", "none", "blur:1", "blur:5", "noise:2", "noise:4+blur:2"]
    true = np.array([1.0, 1.0, 0.9, 0.2, 0.76, 0.3])
    pred = np.array([0.9, 0.95, 0.8, 0.1, 0.2, 0.7])  # right on blur, wrong on noise
    out = srocc_by_kind(pred, true, dist)
    assert set(out) == {"blur", "noise"}
    assert out["blur"] > 0.7
    assert out["noise"] < out["blur"]


def test_plots_render_to_png() -> None:
    from training import plots

    rng = np.random.default_rng(0)
    probs, labels = rng.random((20, 3)), rng.random((20, 3)) > 0.5
    figs = [
        plots.score_scatter(rng.random(20), rng.random(20)),
        plots.srocc_by_kind({"blur": 0.8, "noise": -0.2}),
        plots.pr_curves(probs, labels, ("a", "b", "c")),
        plots.calibration(probs, labels, expected_calibration_error(probs, labels)),
        plots.ladders({"blur": {"s0": [1.0, 0.8, 0.5]}}),
    ]
    for fig in figs:
        assert plots.png_bytes(fig)[:8] == b"\x89PNG\r\n\x1a\n"


# --- pipelines.validate_model: what is measured on a golden set ------------------------------------


def _golden_folder(
    tmp_path,
    cells: list[tuple[str, str]],
    *,
    score_range: tuple[float, float] | None = (1.0, 10.0),
    **kw: object,
):
    """A golden folder as the importer writes it: noisy 64x48 photos with (score, tags) cells on a
    1..10 rating (or ``score_range``), no distortion grid."""
    from PIL import Image

    from lightbox.manifest import GOLDEN_SPLIT, LabelSpec, write_label_spec, write_manifest
    from lightbox.settings import Settings

    s = Settings(project_dir=tmp_path, **kw)
    (s.golden_dir / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, (score, tags) in enumerate(cells):
        image_id = f"{i:016x}"
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(s.golden_dir / "images" / f"{image_id}.png")
        rows.append(
            {
                "image_id": image_id, "path": f"images/{image_id}.png", "split": GOLDEN_SPLIT,
                "group": f"g{i}", "score": score, "tags": tags, "width": "64", "height": "48",
                "phash": "0" * 16, "original": f"{i}.png",
            }
        )  # fmt: skip
    write_manifest(s.golden_dir, rows)
    write_label_spec(s.golden_dir, LabelSpec(score_range=score_range, source_format="imagefolder"))
    return s


def test_golden_score_metrics_are_normalised_by_the_models_range(tmp_path) -> None:
    from pipelines.gates import ModelLabels
    from pipelines.validate_model import load_golden, normalise, score_evidence

    s = _golden_folder(tmp_path, [("2", ""), ("5", ""), ("8", ""), ("", "")])
    golden = load_golden(s)
    labels = ModelLabels((), (1.0, 10.0))
    predicted = np.array([2.9, 5.9, 8.9, 1.0])  # 0.9 rating points off: 0.1 of the 1..10 range
    ev, why = score_evidence(normalise(predicted, labels), golden, labels)
    assert why == {}
    assert ev["golden.score_mae"] == pytest.approx(0.1)  # the unlabelled image is left out
    assert ev["golden.score_srocc"] == pytest.approx(1.0) and ev["golden.scored_images"] == 3.0
    # Too few labelled images: no number, and the reason.
    ev, why = score_evidence(
        normalise(predicted, labels),
        load_golden(_golden_folder(tmp_path / "b", [("2", "")] + [("", "")] * 3)),
        labels,
    )
    assert "golden.score_mae" not in ev and "1 golden image(s) carry a score label" in why["golden.score_mae"]


def test_golden_tag_ap_only_for_tags_with_enough_examples(tmp_path) -> None:
    from pipelines.validate_model import load_golden, tag_evidence

    cells = [("", "dog"), ("", "dog|cat"), ("", "dog|stranger"), ("", "")]
    golden = load_golden(_golden_folder(tmp_path, cells))
    names = ("cat", "dog", "sunset")
    probs = np.array([[0.1, 0.9, 0.1], [0.2, 0.8, 0.1], [0.1, 0.3, 0.1], [0.1, 0.4, 0.1]])
    ev, why = tag_evidence(probs, golden, names, min_examples=3)
    # "sunset" is no tag of the golden set: no truth, not judged (golden_label_notes names it).
    assert {k: v for k, v in ev.items() if "positives" in k} == {
        "golden.positives.cat": 1.0,
        "golden.positives.dog": 3.0,
    }
    assert [k for k in ev if k.startswith("golden.ap.")] == ["golden.ap.dog"]
    assert ev["golden.ap.dog"] == pytest.approx((1 + 1 + 3 / 4) / 3) and why == {}  # a miss at rank 3
    assert "golden.tags_map" in ev and "golden.tags_ece" in ev
    ev, why = tag_evidence(probs[:, 2:], golden, ("sunset",), min_examples=3)
    assert "golden.tags_map" not in ev and "none of the model's tags" in why["golden.tags_map"]


# A relabelled dataset: the golden set was frozen from its first import (scores 1..5, tags night,
# portrait, landscape); the new model answers 0..10 and people (was portrait), landscape, blurry.
_RELABELLED = [("1", "night|landscape"), ("2", "portrait"), ("4", "landscape"), ("5", "portrait|night")]
_NEW_LABELS = (("people", "landscape", "blurry"), (0.0, 10.0))


def test_golden_scores_are_normalised_by_the_golden_sets_own_range(tmp_path) -> None:
    from pipelines.gates import ModelLabels
    from pipelines.validate_model import load_golden, normalise, predictions_table, score_evidence

    golden = load_golden(_golden_folder(tmp_path, _RELABELLED, score_range=(1.0, 5.0)))
    labels = ModelLabels(*_NEW_LABELS)
    predicted = np.array([0.0, 2.5, 7.5, 10.0])  # the same place on each range: the model is exact
    ev, why = score_evidence(normalise(predicted, labels), golden, labels)
    assert why == {} and ev["golden.score_mae"] == pytest.approx(0.0, abs=1e-9)  # not 0.1..0.4 off
    preds = predictions_table(golden, predicted, np.zeros((4, 3)), labels.tag_names, labels)
    assert preds["true_unit"].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
    # A golden set that declares no range: read on the model's, as before golden sets declared one.
    golden = load_golden(_golden_folder(tmp_path / "b", _RELABELLED, score_range=None))
    ev, _ = score_evidence(normalise(predicted, labels), golden, labels)
    assert ev["golden.score_mae"] == pytest.approx(np.mean(np.abs(predicted - [1, 2, 4, 5])) / 10)


def test_model_tags_the_golden_set_never_declares_are_not_judged_on_it(tmp_path) -> None:
    from pipelines.gates import ModelLabels
    from pipelines.validate_model import golden_label_notes, load_golden, tag_evidence

    s = _golden_folder(tmp_path, _RELABELLED, score_range=(1.0, 5.0))
    golden = load_golden(s)
    labels = ModelLabels(*_NEW_LABELS)
    probs = np.array([[0.1, 0.9, 0.0], [0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.9, 0.1, 0.0]])
    ev, why = tag_evidence(probs, golden, labels.tag_names, min_examples=2)
    # people and blurry have no golden truth: were every golden photo a negative for them, the right
    # "people" answers on the portraits would count as confident mistakes.
    assert [k for k in ev if k.startswith("golden.positives.")] == ["golden.positives.landscape"]
    assert ev["golden.tags_ece"] == pytest.approx(
        expected_calibration_error(probs[:, [1]], np.array([[1.0], [0.0], [1.0], [0.0]]))
    )
    assert ev["golden.tags_map"] == pytest.approx(1.0) and why == {}
    assert golden_label_notes(s, labels) == [
        "golden scores on 1..5, this model's on 0..10: each normalised by its own range",
        "tags without golden truth: people, blurry: re-import with a golden split to gate them",
    ]
    assert golden_label_notes(s, ModelLabels(("landscape",), (1.0, 5.0))) == []


def test_a_golden_set_without_truth_for_the_model_is_refused_in_one_line(tmp_path) -> None:
    from pipelines.gates import ModelLabels
    from pipelines.validate_model import GoldenSetIncomparable, check_comparable, load_golden

    golden = load_golden(_golden_folder(tmp_path, _RELABELLED, score_range=(1.0, 5.0)))
    check_comparable(golden, ModelLabels(*_NEW_LABELS))  # landscape in common, both scales declared
    with pytest.raises(GoldenSetIncomparable, match="no truth for this model's tags") as caught:
        check_comparable(golden, ModelLabels(("people", "blurry"), (0.0, 10.0)))
    assert "\n" not in str(caught.value) and "[landscape, night, portrait]" in str(caught.value)
    # Golden scores without a declared range: on the model's scale when they fit it, refused when not.
    unknown = load_golden(_golden_folder(tmp_path / "b", [("7", "landscape"), ("9", "")], score_range=None))
    check_comparable(unknown, ModelLabels(("landscape",), (0.0, 10.0)))
    with pytest.raises(GoldenSetIncomparable, match="cannot be known"):
        check_comparable(unknown, ModelLabels(("landscape",), (1.0, 5.0)))


class _SharpnessModel:
    """Scores an image by its pixel-to-pixel detail on a 1..10 scale: a blur lowers it."""

    tag_names = ("dog",)

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grey = batch.astype(np.float32).mean(axis=1)
        detail = np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2)) / 255.0
        return (1 + 9 * np.clip(detail * 4, 0, 1)).astype(np.float32), np.full(
            (len(batch), 1), 0.5, np.float32
        )


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("auto", ["invariance_max_delta"]),
        ("on", ["invariance_max_delta", "blur_lowers_score_pass_rate"]),
        ("off", []),
    ],
)
def test_behaviour_on_a_golden_set_without_a_grid_follows_the_mode(
    tmp_path, mode: str, expected: list[str]
) -> None:
    from pipelines.gates import ModelLabels
    from pipelines.validate_model import _predict, behaviour_results, load_golden, predictions_table

    s = _golden_folder(tmp_path, [("5", "dog")] * 4, gate_behaviour=mode)
    golden = load_golden(s)
    model = _SharpnessModel()
    labels = ModelLabels(model.tag_names, (1.0, 10.0))
    scores, probs = _predict(model, golden.inputs)
    preds = predictions_table(golden, scores, probs, model.tag_names, labels)
    results, why = behaviour_results(model, golden, preds, labels, s)
    assert [r.name for r in results] == expected and why == {}
    by_name = {r.name: r for r in results}
    if "blur_lowers_score_pass_rate" in by_name:
        blur = by_name["blur_lowers_score_pass_rate"]
        assert blur.cases == 4 and blur.value == 1.0, blur.failures
    # A tags-only model has no score behaviour to check.
    tags_only = ModelLabels(model.tag_names, None)
    preds = predictions_table(golden, scores, probs, model.tag_names, tags_only)
    assert behaviour_results(model, golden, preds, tags_only, s) == ([], {})


def test_the_report_shows_the_label_spec_and_the_notes(tmp_path) -> None:
    from pipelines.gates import GateCheck, GateVerdict, ModelLabels
    from pipelines.report import figures, render_markdown
    from pipelines.validate_model import GateReport, _predict, load_golden, predictions_table

    golden = load_golden(_golden_folder(tmp_path, [("2", "dog"), ("7", ""), ("", "dog")]))
    model = _SharpnessModel()
    labels = ModelLabels(model.tag_names, (1.0, 10.0), "rating")
    scores, probs = _predict(model, golden.inputs)
    note = "champion v3 was trained on other labels (tags [cat], no score): no regression baseline"
    report = GateReport(
        "m", "4", GateVerdict([GateCheck("golden.score_mae", 0.1, 0.25, "<=")], [note]), {}, {}, "x.dir", "3",
        "2026-01-01", labels=labels, preds=predictions_table(golden, scores, probs, model.tag_names, labels),
    )  # fmt: skip
    md = render_markdown(report)
    assert "- tags (1): dog" in md and "- score: rating on 1..10" in md
    assert f"- {note}" in md
    # No distortion grid: no per-level plots; the scatter leaves the unlabelled image out.
    assert set(figures(report)) == {"score_pred_vs_true", "tags_pr_curves", "tags_calibration"}
    tags_only = GateReport(
        "m", "5", GateVerdict(), {}, {}, None, None, "t", labels=ModelLabels(("dog",), None)
    )
    assert "- score: none (tags-only model)" in render_markdown(tags_only)
    assert "- labels: not recorded" in render_markdown(
        GateReport("m", "6", GateVerdict(), {}, {}, None, None, "t")
    )


def test_a_refusal_prints_the_notes_on_the_golden_labels(tmp_path) -> None:
    from lightbox.settings import Settings
    from pipelines.gates import GateCheck, GateVerdict
    from pipelines.promote import _failure
    from pipelines.validate_model import GateReport

    note = "tags without golden truth: people, blurry: re-import with a golden split to gate them"
    verdict = GateVerdict(
        [GateCheck("golden.tags_ece", 0.41, 0.15, "<=")], ["compared with champion v1", note]
    )
    report = GateReport("m", "2", verdict, {}, {}, "x.dir", "1", "t", label_notes=[note])
    message = str(_failure(Settings(project_dir=tmp_path), "2", "champion", report))
    assert f"golden.tags_ece = 0.4100 (needs <= 0.15)\n  note: {note}" in message
    assert "compared with champion" not in message  # the other notes stay in the full verdict


def test_the_synthetic_grid_holds_truth_for_the_whole_demo_vocabulary(tmp_path) -> None:
    from lightbox.manifest import LabelSpec, write_label_spec
    from pipelines.gates import ModelLabels
    from pipelines.validate_model import golden_label_notes, load_golden, tag_evidence

    s = _golden_folder(tmp_path, [("0.5", "blurry|synthetic"), ("0.9", "synthetic"), ("0.2", "blurry")])
    write_label_spec(s.golden_dir, LabelSpec(score_range=(0.0, 1.0), source_format="synthetic"))
    labels = ModelLabels(("animal", "blurry", "synthetic"), (0.0, 1.0))
    # No procedural scene is an animal: a true negative on every image, judged as before.
    ev, _ = tag_evidence(np.full((3, 3), 0.5), load_golden(s), labels.tag_names, min_examples=3)
    assert ev["golden.positives.animal"] == 0.0 and golden_label_notes(s, labels) == []
