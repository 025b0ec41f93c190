"""Fine-tuning: training images/s against the model's own forward+backward limit, and the quality gain of
fine-tuning over heads-only on the same data and a golden set.

    .venv/bin/python bench/finetune.py [--train 48] [--golden 24] [--epochs 3] [--workers 1]

Throughput: one epoch of the real loop (DataLoader workers decoding PNGs and augmenting, then forward +
backward + step) against the same steps on tensors decoded beforehand (the device's limit for this
model, batch and unfrozen depth); the goal is >= 0.8x (decoding never starves the device). Quality: heads
fitted on the frozen extractor's features (the heads-only path), then fine-tuned from them; both scored
on a golden set of rendered scenes no training image comes from (SROCC of the score, tag mAP). Prints a
Markdown table. Only ratios measured in one run on one machine mean anything (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lightbox import distortions
from lightbox.dataset import photo_sources, procedural_scene, score_for, tags_for
from lightbox.settings import Settings
from pipelines.features import extract
from training import finetune as ft
from training.fit import Split, fit_heads, predict
from training.metrics import evaluate
from training.model import FeatureExtractor, LightboxModel, ModelConfig

TAGS = ("blurry", "noisy", "jpeg_artifacts")
KINDS = ("blur", "noise", "jpeg")


def write_set(root: Path, sources: list[Image.Image], n: int, seed: int) -> ft.Images:
    """n PNGs (longest side 320, as the dataset stores them) of the sources with one graded defect each
    (a third pristine), labelled by the synthetic set's own policy."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths, scores, tags = [], [], []
    for i in range(n):
        img = sources[i % len(sources)].copy()
        img.thumbnail((320, 320))
        applied = [] if i % 3 == 0 else [(KINDS[i % len(KINDS)], int(rng.integers(1, 6)))]
        for kind, level in applied:
            img = distortions.apply(img, kind, level, rng)
        path = root / f"{i:04d}.png"
        img.save(path)
        paths.append(path)
        scores.append(score_for(applied))
        names = set(tags_for(applied, []))
        tags.append([float(t in names) for t in TAGS])
    return ft.Images(tuple(paths), np.array(scores, np.float32), np.array(tags, np.float32))


def throughput(start: LightboxModel, images: ft.Images, params: ft.FinetuneParams, workers: int) -> dict:
    """images/s of one epoch through the loop vs through the same steps on pre-decoded tensors."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = LightboxModel(
        ft.finetuned_config(start.config, params), copy.deepcopy(start.heads), copy.deepcopy(start.extractor)
    )
    one = ft.FinetuneParams(**{**params.__dict__, "epochs": 1})
    ft.fine_tune(model, one, images, None, device=device, workers=workers)  # warm-up: workers, kernels
    began = time.perf_counter()
    ft.fine_tune(model, one, images, None, device=device, workers=workers)
    loop_s = time.perf_counter() - began

    # The limit: the same model, batch and steps, the inputs already decoded, augmented and on the device.
    backbone = ft.unfreeze(model, params.unfreeze_blocks)
    opt = ft.optimizer(model, backbone, params, model.config)
    net, precision = ft.Trainee(model).to(device), ft.precision_for(device)
    rng = np.random.default_rng(0)
    pixels = [ft.augment(Image.open(p).convert("RGB"), params.policy, rng).pixels for p in images.paths]
    used = len(images) // params.batch_size * params.batch_size
    batches = [
        torch.from_numpy(np.stack(pixels[i : i + params.batch_size])).to(device)
        for i in range(0, used, params.batch_size)
    ]
    pos_weight = torch.ones(len(TAGS), device=device)
    score = torch.from_numpy(images.score[: params.batch_size]).to(device)
    tags = torch.from_numpy(images.tags[: params.batch_size]).to(device)
    ft.set_train_mode(model)
    began = time.perf_counter()
    for x in batches:
        with precision.autocast(device):
            logits = net(x)
        loss = ft.loss_fn(logits, score, tags, model.config, pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    limit_s = time.perf_counter() - began
    return {"device": device.type, "loop": used / loop_s, "limit": used / limit_s}


def quality(model: LightboxModel, golden: ft.Images) -> dict[str, float]:
    feats = extract(Settings(), list(golden.paths), batch_size=8, extractor=model.extractor)
    s, t = predict(model.heads.cpu(), feats)
    m = evaluate(s, golden.score, t, golden.tags)
    return {"srocc": m["score_srocc"], "map": m["tags_map"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=48)
    ap.add_argument("--val", type=int, default=12)
    ap.add_argument("--golden", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--unfreeze", type=int, default=1)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    photos = [img for _, img, _ in photo_sources()]
    scenes = [procedural_scene(1000 + i, 320)[0] for i in range(4)]
    config = ModelConfig(tag_names=TAGS, hidden=128)
    params = ft.FinetuneParams(
        unfreeze_blocks=args.unfreeze,
        epochs=args.epochs,
        batch_size=8,
        head_lr=3e-4,
        backbone_lr_ratio=0.3,
        aug_strength=0.5,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train = write_set(root / "train", photos[:8], args.train, seed=1)
        val = write_set(root / "val", photos[8:], args.val, seed=2)
        golden = write_set(root / "golden", scenes, args.golden, seed=3)
        extractor = FeatureExtractor()
        began = time.perf_counter()
        x = extract(Settings(), list(train.paths), batch_size=8, extractor=extractor)
        xv = extract(Settings(), list(val.paths), batch_size=8, extractor=extractor)
        heads = fit_heads(
            config, Split(x, train.score, train.tags), Split(xv, val.score, val.tags), epochs=60
        )
        heads_s = time.perf_counter() - began
        start = LightboxModel(config, heads, extractor).eval()
        base = quality(start, golden)
        tuned = LightboxModel(
            ft.finetuned_config(config, params), copy.deepcopy(heads), copy.deepcopy(extractor)
        )
        began = time.perf_counter()
        ft.fine_tune(tuned, params, train, val, workers=args.workers)
        ft_s = time.perf_counter() - began
        gain = quality(tuned, golden)
        speed = throughput(start, train, params, args.workers)
    rows = [
        "| measure | value |",
        "|---|---|",
        f"| device | {speed['device']} ({torch.get_num_threads()} torch threads, "
        f"{args.workers} loader workers) |",
        f"| training loop, images/s (decode + augment + fwd/bwd) | {speed['loop']:.1f} |",
        f"| fwd+bwd limit on pre-decoded tensors, images/s | {speed['limit']:.1f} |",
        f"| loop / limit | {speed['loop'] / speed['limit']:.2f}x |",
        f"| golden SROCC: heads-only -> fine-tuned | {base['srocc']:.3f} -> {gain['srocc']:.3f} |",
        f"| golden tag mAP: heads-only -> fine-tuned | {base['map']:.3f} -> {gain['map']:.3f} |",
        f"| wall time: heads (features + fit) / fine-tune ({args.epochs} epochs) | "
        f"{heads_s:.0f} s / {ft_s:.0f} s |",
        f"| sizes | train {args.train}, validation {args.val}, golden {args.golden}; batch 8; "
        f"{args.unfreeze} block(s) unfrozen |",
    ]
    sys.stdout.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
