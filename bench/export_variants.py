"""What the exported graph's own choices cost, side by side in one run (issue 11): the order statistics
by a full sort (as before) against a selection (training.model._kth_smallest), and int8 quantization
of the convolutions alone (as before) against the convolutions with their clips (training.quantize).

    .venv/bin/python bench/export_variants.py [--rounds 3] [--seconds 4] [--batch 8]   # ~3 minutes
    .venv/bin/python bench/export_variants.py --openvino   # also OpenVINO fp32 and NNCF int8

``--openvino`` needs ``pip install openvino nncf`` (not a lightbox dependency: it did not beat ONNX
Runtime here, docs/benchmarks.md); it adds OpenVINO on the shipped graph and NNCF's static int8 of it,
calibrated on the same photos, on one inference thread as well.

Each variant is one ONNX Runtime session on one thread, measured in turn, ``--rounds`` times
(alternating, so that the VM's drift falls on every variant alike); the table gives the median
images/s, its ratio to the fp32 export as it ships, and how far each variant's answers are from it on
real photos (mirrored: not the int8 calibration images). Only ratios from one run mean anything.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def sort_kth(x, k: int):  # noqa: ANN001, ANN201 - the torch signature of training.model._kth_smallest
    """The order statistic as it was computed before the selection: one full sort per row."""
    return x.sort(dim=1).values[:, k - 1]


def variants() -> dict[str, bytes]:
    from runtimes import build_model, photos_batch

    import training.model as model_module
    from training.export import export_onnx
    from training.quantize import quantize_int8

    model = build_model()
    shipped = export_onnx(model)
    selection = model_module._kth_smallest
    model_module._kth_smallest = sort_kth
    try:
        sorted_stats = export_onnx(model)
    finally:
        model_module._kth_smallest = selection
    calibration = photos_batch(32)

    return {
        "fp32, order statistics by a full sort (before)": sorted_stats,
        "fp32, order statistics by selection (shipped)": shipped,
        "int8, convolutions only (before)": quantize_int8(shipped, calibration, op_types=("Conv",)),
        "int8, convolutions and clips (`lightbox quantize`)": quantize_int8(shipped, calibration),
    }


class OpenVinoModel:
    """An OpenVINO CPU compilation of an ONNX graph on one thread, called like training.export.OnnxModel."""

    def __init__(self, model, core) -> None:  # noqa: ANN001 - openvino types, imported on demand
        config = {"INFERENCE_NUM_THREADS": "1", "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(model, "CPU", config)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.compiled(x)[0])


def openvino_variants(shipped: bytes) -> dict[str, OpenVinoModel]:
    """OpenVINO fp32 of the shipped graph and NNCF's static int8 of it (optional packages)."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        sys.exit("--openvino needs: .venv/bin/pip install openvino nncf")
    import tempfile

    from runtimes import photos_batch

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(shipped)
        fp32 = core.read_model(path)
        calibration = photos_batch(64)
        data = nncf.Dataset([calibration[i : i + 8] for i in range(0, len(calibration), 8)])
        int8 = nncf.quantize(core.read_model(path), data, subset_size=len(calibration))
        return {
            "OpenVINO fp32 (its CPU plugin's default precision)": OpenVinoModel(fp32, core),
            "OpenVINO int8 (NNCF static, 64 photos)": OpenVinoModel(int8, core),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--openvino", action="store_true", help="add OpenVINO fp32 and NNCF int8 (optional)")
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds <= 0 or args.batch < 1:
        sys.exit("--rounds and --batch need at least 1, --seconds more than 0")
    from runtimes import photos_batch
    from scipy.stats import spearmanr

    from training.export import OnnxModel

    graphs = variants()
    sessions = {name: OnnxModel(g, threads=1) for name, g in graphs.items()}
    if args.openvino:
        sessions |= openvino_variants(graphs["fp32, order statistics by selection (shipped)"])
    reference_name = "fp32, order statistics by selection (shipped)"
    test = photos_batch(16)[:, :, :, ::-1].copy()
    reference = sessions[reference_name](test)
    x = photos_batch(args.batch)
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(args.rounds):
        for name, session in sessions.items():
            session(x)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                session(x)
                n += args.batch
            rates[name].append(n / (time.perf_counter() - t0))
        print(f"round {r + 1}: " + ", ".join(f"{v[-1]:.1f}" for v in rates.values()), file=sys.stderr)
    base = float(np.median(rates[reference_name]))
    where = f"one thread, batch {args.batch}, {args.rounds} alternating rounds of {args.seconds:g} s"
    print(f"{'ONNX Runtime and OpenVINO' if args.openvino else 'ONNX Runtime'}, {where}:\n")
    print("| variant | img/s (median) | rounds | / shipped fp32 | max abs diff | score rank corr | MB |")
    print("|---|---|---|---|---|---|---|")
    for name, session in sessions.items():
        out = session(test)
        med = float(np.median(rates[name]))
        corr = float(spearmanr(out[:, 0], reference[:, 0]).statistic)
        each = " / ".join(f"{v:.1f}" for v in rates[name])
        size = f"{len(graphs[name]) / 1e6:.1f}" if name in graphs else ""
        print(
            f"| {name} | {med:.1f} | {each} | {med / base:.2f}x | {np.abs(out - reference).max():.3f} "
            f"| {corr:.3f} | {size} |"
        )


if __name__ == "__main__":
    main()
