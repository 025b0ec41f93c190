"""The ONNX export and the runtime it serves on: the exportable image statistics give today's numbers,
the export answers as the eager model does on real photos, and a loader picks the runtime the gates
verified (``pick_runtime``) or says why not."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from lightbox.adapters.mlflow_registry import RUNTIME_CPU_TAG, RUNTIME_ONNX_TAG
from lightbox.dataset import TAG_VOCABULARY
from lightbox.imaging import to_model_input
from training.export import OnnxModel, export_onnx
from training.model import (
    _IMMERKAER,
    _LAPLACIAN,
    FeatureExtractor,
    Heads,
    LightboxModel,
    ModelConfig,
    image_stats,
)
from training.predictor import Predictor, RuntimeUnavailable, pick_runtime


def _stats_before_export(x: torch.Tensor) -> torch.Tensor:
    """image_stats as it was before the export (kthvalue and median, which ONNX lacks): the reference
    the exportable version must reproduce exactly, or every cached feature would be stale."""
    f = torch.nn.functional
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    flat = luma.flatten(1)
    n = int(flat.shape[1])
    q = (
        torch.stack([flat.kthvalue(round(p * (n - 1)) + 1, dim=1).values for p in (0.02, 0.5, 0.98)], 1)
        / 255.0
    )
    lap = f.conv2d(luma[:, None], _LAPLACIAN)[:, 0]
    sharpness = torch.log1p(lap.var(dim=(1, 2))) / 10.0
    sigma = (math.sqrt(math.pi / 2) / 6.0) * f.conv2d(luma[:, None], _IMMERKAER).abs().mean((1, 2, 3))
    noise = torch.log1p(sigma) / 5.0

    def grad_energy(img: torch.Tensor) -> torch.Tensor:
        return ((img[:, 1:, :-1] - img[:, :-1, :-1]) ** 2 + (img[:, :-1, 1:] - img[:, :-1, :-1]) ** 2).mean(
            (1, 2)
        )

    half = f.avg_pool2d(luma[:, None], 2)[:, 0]
    detail_ratio = torch.log((grad_energy(luma) + 1.0) / (grad_energy(half) + 1.0))
    mu = f.avg_pool2d(luma[:, None], 8)[:, 0]
    local_std = (f.avg_pool2d(luma[:, None] ** 2, 8)[:, 0] - mu**2).clamp_min(0).sqrt().flatten(1)
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = (
        torch.sqrt(rg.std(dim=(1, 2)) ** 2 + yb.std(dim=(1, 2)) ** 2)
        + 0.3 * torch.sqrt(rg.mean(dim=(1, 2)) ** 2 + yb.mean(dim=(1, 2)) ** 2)
    ) / 128.0
    columns = [flat.mean(1) / 255.0, flat.std(1) / 128.0, q[:, 0], q[:, 1], q[:, 2]]
    columns += [(flat > 250).float().mean(1), (flat < 5).float().mean(1), sharpness, noise, detail_ratio]
    columns += [local_std.mean(1) / 64.0, local_std.median(1).values / 64.0, colourfulness]
    return torch.stack(columns, dim=1)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Real photographs (and their mirror images) as the server feeds them to the model."""
    imgs = [data.chelsea(), data.coffee(), data.rocket(), data.astronaut(), data.immunohistochemistry()]
    batch = [to_model_input(Image.fromarray(a)) for a in imgs]
    batch += [b[:, :, ::-1] for b in batch]
    return np.ascontiguousarray(np.stack(batch))


@pytest.fixture(scope="module")
def model() -> LightboxModel:
    torch.manual_seed(0)
    config = ModelConfig(tag_names=TAG_VOCABULARY, score_low=1.0, score_high=10.0)
    return LightboxModel(config, Heads(config), FeatureExtractor()).eval()


@pytest.fixture(scope="module")
def onnx_bytes(model: LightboxModel) -> bytes:
    return export_onnx(model)


def test_exportable_stats_equal_the_stats_features_were_computed_with(photos: np.ndarray) -> None:
    x = torch.from_numpy(photos).float()
    flat = torch.full((2, 3, 224, 224), 128.0)  # ties everywhere: every order statistic equal
    for batch in (x, flat, torch.randint(0, 256, (3, 3, 224, 224)).float()):
        assert torch.equal(image_stats(batch), _stats_before_export(batch))


def test_onnx_export_answers_as_the_eager_model_on_real_photos(
    model: LightboxModel, onnx_bytes: bytes, photos: np.ndarray
) -> None:
    session = OnnxModel(onnx_bytes, threads=1)
    with torch.inference_mode():
        eager = model(torch.from_numpy(photos)).numpy()
    for n in (1, 3, len(photos)):  # the batch dimension is free
        out = session(photos[:n])
        assert out.shape == eager[:n].shape
        np.testing.assert_allclose(out, eager[:n], atol=1e-4, rtol=0)
    assert float(eager[:, 0].min()) >= 1.0 and float(eager[:, 0].max()) <= 10.0  # the dataset's scale


def test_predictor_serves_a_checked_export_on_onnxruntime(
    model: LightboxModel, onnx_bytes: bytes, photos: np.ndarray
) -> None:
    onnx = Predictor(model, "m", "1", "cpu", onnx=onnx_bytes)
    eager = Predictor(model, "m", "1", "cpu", trace=False)
    assert onnx.runtime == "onnxruntime" and eager.runtime == "torch-eager"
    (s1, t1), (s2, t2) = onnx.predict(photos), eager.predict(photos)
    np.testing.assert_allclose(s1, s2, atol=1e-4)
    np.testing.assert_allclose(t1, t2, atol=1e-5)


def test_an_export_of_other_weights_is_refused_at_load(
    model: LightboxModel, photos: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(1)  # same architecture, other heads: a swapped or stale file
    other = LightboxModel(model.config, Heads(model.config), model.extractor).eval()
    with caplog.at_level(logging.WARNING, logger="training.predictor"):
        p = Predictor(model, "m", "1", "cpu", onnx=export_onnx(other))
    assert p.runtime == "torchscript"
    assert "serving on torch: the ONNX export differs" in caplog.text
    np.testing.assert_allclose(
        p.predict(photos)[0], Predictor(model, "m", "1", "cpu", trace=False).predict(photos)[0], atol=1e-4
    )


def test_a_file_that_is_no_onnx_model_falls_back_to_torch(model: LightboxModel) -> None:
    assert Predictor(model, "m", "1", "cpu", onnx=b"not a model").runtime == "torchscript"


VERIFIED = {
    RUNTIME_ONNX_TAG: "verified: max |diff| 3e-07",
    RUNTIME_CPU_TAG: "onnxruntime (40 ms vs torch 70 ms)",
}
REFUSED = {RUNTIME_ONNX_TAG: "refused: max |diff| 0.2 (limits ...)", RUNTIME_CPU_TAG: "torch (70 ms)"}


def test_auto_picks_onnxruntime_on_cpu_only_when_the_gates_verified_it() -> None:
    assert pick_runtime("auto", "cpu", VERIFIED, has_onnx=True).runtime == "onnxruntime"
    refused = pick_runtime("auto", "cpu", REFUSED, has_onnx=True)
    assert (refused.runtime, refused.fallback) == ("torch", True)
    assert "did not pass the gates' check" in refused.note
    unchecked = pick_runtime("auto", "cpu", {}, has_onnx=True)
    assert unchecked.runtime == "torch" and "not checked" in unchecked.note
    missing = pick_runtime("auto", "cpu", VERIFIED, has_onnx=False)  # tags without the file: torch
    assert missing.runtime == "torch" and "no ONNX export" in missing.note


def test_auto_keeps_torch_where_the_gates_measured_it_faster_and_on_cuda() -> None:
    slower = VERIFIED | {RUNTIME_CPU_TAG: "torch (30 ms) vs onnxruntime 40 ms"}
    choice = pick_runtime("auto", "cpu", slower, has_onnx=True)
    assert (choice.runtime, choice.fallback) == ("torch", False)
    assert pick_runtime("auto", "cuda", VERIFIED, has_onnx=True).runtime == "torch"


def test_forcing_a_runtime() -> None:
    assert pick_runtime("torch", "cpu", VERIFIED, has_onnx=True).runtime == "torch"
    assert pick_runtime("onnxruntime", "cpu", VERIFIED, has_onnx=True).runtime == "onnxruntime"
    with pytest.raises(RuntimeUnavailable, match="did not pass the gates' check.*--runtime torch"):
        pick_runtime("onnxruntime", "cpu", REFUSED, has_onnx=True)
    with pytest.raises(RuntimeUnavailable, match="CPU"):
        pick_runtime("onnxruntime", "cuda", VERIFIED, has_onnx=True)
    with pytest.raises(RuntimeUnavailable, match="unknown runtime"):
        pick_runtime("tensorrt", "cpu", VERIFIED, has_onnx=True)


def test_an_int8_candidate_serves_its_verified_graph_on_cpu_whatever_the_timings() -> None:
    torch_faster = VERIFIED | {RUNTIME_CPU_TAG: "torch (30 ms) vs onnxruntime-int8 40 ms"}
    choice = pick_runtime("auto", "cpu", torch_faster, has_onnx=True, quantized=True)
    assert choice.runtime == "onnxruntime" and "int8" in choice.note
    refused = pick_runtime("auto", "cpu", REFUSED, has_onnx=True, quantized=True)
    assert (refused.runtime, refused.fallback) == ("torch", True)
    assert "its int8 graph is not served, its fp32 weights are" in refused.note
    assert pick_runtime("auto", "cuda", VERIFIED, has_onnx=True, quantized=True).runtime == "torch"
    with pytest.raises(RuntimeUnavailable, match="int8 graph is not served"):
        pick_runtime("onnxruntime", "cpu", REFUSED, has_onnx=True, quantized=True)


def test_an_int8_graph_is_served_as_int8_and_probed_for_running_not_for_equality(
    model: LightboxModel, photos: np.ndarray, onnx_bytes: bytes
) -> None:
    from training.quantize import QuantizeError, quantize_int8

    int8 = quantize_int8(onnx_bytes, photos)
    p = Predictor(model, "m", "1", "cpu", onnx=int8, quantized=True)
    assert p.runtime == "onnxruntime-int8" and p.quantized
    # Exact-equality probing (the fp32 rule) would refuse it: int8 answers differ by design.
    assert Predictor(model, "m", "1", "cpu", onnx=int8).runtime == "torchscript"
    with pytest.raises(QuantizeError, match="calibration needs uint8"):
        quantize_int8(onnx_bytes, photos[:0])


def test_an_int8_candidate_without_its_graph_is_refused_not_served_as_fp32(tmp_path: Path) -> None:
    from lightbox.settings import Settings
    from pipelines.gates import INT8_VERIFIED
    from pipelines.validate_model import runtime_check

    settings = Settings(project_dir=tmp_path)
    # Nothing but the settings is read when there is no graph: no model, golden set or labels.
    ev, details, tags = runtime_check(settings, None, None, None, None, {}, quantized=True)  # type: ignore[arg-type]
    assert ev == {INT8_VERIFIED: 0.0} and "has no model.onnx" in details[INT8_VERIFIED]
    assert tags[RUNTIME_CPU_TAG].startswith("torch")
