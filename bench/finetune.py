"""Fine-tuning: training images/s against the model's own forward+backward limit, and the quality gain of
fine-tuning over heads-only on the same data and a golden set.

    .venv/bin/python bench/finetune.py [--train 48] [--golden 24] [--epochs 3] [--workers 1]
        [--speed-epochs 3] [--jpeg-side 2000]

Throughput: the real loop (DataLoader workers feeding forward + backward + step) for ``--speed-epochs``
epochs in one call, twice: decoding every image every epoch (as before the decode cache) and decoding
once (training/decoded.py), each epoch timed apart: the first holds the workers' start and, decoding
once, the decode pass; the later ones are the steady state. Against the same steps on tensors decoded
beforehand (the device's limit for this model, batch and unfrozen depth), measured before and after the
loops; the goal is >= 0.8x (decoding never starves the device). Quality: heads
fitted on the frozen extractor's features (the heads-only path), then fine-tuned from them; both scored
on a golden set of rendered scenes no training image comes from (SROCC of the score, tag mAP). Prints a
Markdown table. Only ratios measured in one run on one machine mean anything (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
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
from training.decoded import CachePolicy
from training.fit import Split, fit_heads, predict
from training.metrics import evaluate
from training.model import FeatureExtractor, Heads, LightboxModel, ModelConfig

TAGS = ("blurry", "noisy", "jpeg_artifacts")
KINDS = ("blur", "noise", "jpeg")


def write_set(root: Path, sources: list[Image.Image], n: int, seed: int, jpeg_side: int = 0) -> ft.Images:
    """n PNGs (longest side 320, as the synthetic set stores them) of the sources with one graded defect
    each (a third pristine), labelled by the synthetic set's own policy; ``jpeg_side``: JPEGs (q90)
    enlarged to that longest side instead, with grain, as a user's camera photos come (throughput only:
    their labels no longer hold)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths, scores, tags = [], [], []
    for i in range(n):
        img = sources[i % len(sources)].copy()
        img.thumbnail((320, 320))
        applied = [] if i % 3 == 0 else [(KINDS[i % len(KINDS)], int(rng.integers(1, 6)))]
        for kind, level in applied:
            img = distortions.apply(img, kind, level, rng)
        if jpeg_side:
            img = img.resize((jpeg_side, round(jpeg_side * img.height / img.width)), Image.Resampling.BICUBIC)
            # Grain, so the file weighs what a camera's does (4000 px: ~2.5 MB; a smooth enlargement
            # compresses to a third of that and decodes twice as fast as a real photo would).
            grain = rng.normal(0.0, 6.0, (img.height, img.width, 3))
            img = Image.fromarray(np.clip(np.asarray(img, np.float32) + grain, 0, 255).astype(np.uint8))
            path = root / f"{i:04d}.jpg"
            img.save(path, quality=90)
        else:
            path = root / f"{i:04d}.png"
            img.save(path)
        paths.append(path)
        scores.append(score_for(applied))
        names = set(tags_for(applied, []))
        tags.append([float(t in names) for t in TAGS])
    return ft.Images(tuple(paths), np.array(scores, np.float32), np.array(tags, np.float32))


def epoch_seconds(
    start: LightboxModel,
    images: ft.Images,
    params: ft.FinetuneParams,
    workers: int,
    cache: CachePolicy | None,
    device: torch.device,
) -> list[float]:
    """Seconds of each epoch of one ``fine_tune`` call, no validation. The first epoch counts from the
    call itself: the workers' start and, with ``cache``, the one decode pass are in it."""
    model = LightboxModel(
        ft.finetuned_config(start.config, params), copy.deepcopy(start.heads), copy.deepcopy(start.extractor)
    )
    marks = [time.perf_counter()]

    def report(epoch: int, metrics: dict[str, float], state: ft.State) -> None:
        marks.append(time.perf_counter())

    ft.fine_tune(model, params, images, None, device=device, workers=workers, report=report, cache=cache)
    return list(np.diff(marks))


def limit_rate(
    start: LightboxModel, images: ft.Images, params: ft.FinetuneParams, device: torch.device
) -> float:
    """images/s of the same steps (model, batch, unfrozen depth) on inputs already decoded, augmented and
    on the device: the model's own forward+backward limit."""
    model = LightboxModel(
        ft.finetuned_config(start.config, params), copy.deepcopy(start.heads), copy.deepcopy(start.extractor)
    )
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

    def step(x: torch.Tensor) -> None:
        with precision.autocast(device):
            logits = net(x)
        loss = ft.loss_fn(logits, score, tags, model.config, pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up: kernels, the optimizer's state
    began = time.perf_counter()
    for x in batches:
        step(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return used / (time.perf_counter() - began)


def throughput(
    start: LightboxModel, images: ft.Images, params: ft.FinetuneParams, workers: int, spill: Path
) -> dict:
    """The loop decoding every epoch (as before issue 15's cache) and decoding once, each for
    ``params.epochs`` epochs in one call, between two measures of the limit (the machine's load moves)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    used = len(images) // params.batch_size * params.batch_size
    limits = [limit_rate(start, images, params, device)]
    every = epoch_seconds(start, images, params, workers, None, device)
    once = epoch_seconds(start, images, params, workers, CachePolicy(spill_root=spill), device)
    limits.append(limit_rate(start, images, params, device))
    return {
        "device": device.type,
        "limits": limits,
        "limit": float(np.mean(limits)),
        "every_first": used / every[0],
        "every_rest": used * (len(every) - 1) / sum(every[1:]),
        "once_first": used / once[0],
        "once_rest": used * (len(once) - 1) / sum(once[1:]),
    }


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
    ap.add_argument("--speed-images", type=int, default=160, help="images per throughput epoch")
    ap.add_argument("--speed-epochs", type=int, default=4, help="epochs of each throughput loop")
    ap.add_argument(
        "--jpeg-side", type=int, default=4000, help="throughput on JPEGs this long (camera-size); 0: PNGs"
    )
    ap.add_argument("--no-quality", action="store_true", help="the throughput table only")
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
        # Throughput first, before the quality part starts Ray (its daemons would share the cores).
        unique = write_set(root / "speed", photos[:8], 16, seed=1, jpeg_side=args.jpeg_side)
        cycle = np.arange(args.speed_images) % len(unique)
        speed_set = ft.Images(tuple(unique.paths[i] for i in cycle), unique.score[cycle], unique.tags[cycle])
        torch.manual_seed(0)
        start = LightboxModel(config, Heads(config), FeatureExtractor()).eval()
        speed = throughput(
            start,
            speed_set,
            dataclasses.replace(params, epochs=args.speed_epochs),
            args.workers,
            root / "spill",
        )
        base = gain = {"srocc": math.nan, "map": math.nan}
        heads_s = ft_s = math.nan
        if not args.no_quality:
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
            base = quality(LightboxModel(config, heads, extractor).eval(), golden)
            tuned = LightboxModel(
                ft.finetuned_config(config, params), copy.deepcopy(heads), copy.deepcopy(extractor)
            )
            began = time.perf_counter()
            ft.fine_tune(tuned, params, train, val, workers=args.workers)
            ft_s = time.perf_counter() - began
            gain = quality(tuned, golden)
    lim = speed["limit"]
    rest = f"epochs 2-{args.speed_epochs}"
    kind = f"{args.jpeg_side}px JPEGs" if args.jpeg_side else "320px PNGs"
    rows = [
        "| measure | images/s | loop / limit |",
        "|---|---:|---:|",
        f"| fwd+bwd limit on pre-decoded tensors (before / after the loops: "
        f"{speed['limits'][0]:.2f} / {speed['limits'][1]:.2f}) | {lim:.2f} | 1 |",
        f"| decode every epoch (before): epoch 1 (worker start + decode + augment + fwd/bwd) | "
        f"{speed['every_first']:.2f} | {speed['every_first'] / lim:.2f}x |",
        f"| decode every epoch (before): {rest} (decode + augment + fwd/bwd) | "
        f"{speed['every_rest']:.2f} | {speed['every_rest'] / lim:.2f}x |",
        f"| decoded once: epoch 1 (worker start + the decode pass + augment + fwd/bwd) | "
        f"{speed['once_first']:.2f} | {speed['once_first'] / lim:.2f}x |",
        f"| decoded once: {rest} (augment + fwd/bwd) | {speed['once_rest']:.2f} | "
        f"{speed['once_rest'] / lim:.2f}x |",
        "",
        "| measure | value |",
        "|---|---|",
        f"| device | {speed['device']} ({torch.get_num_threads()} torch threads, "
        f"{args.workers} loader workers) |",
        *(
            []
            if args.no_quality
            else [
                f"| golden SROCC: heads-only -> fine-tuned | {base['srocc']:.3f} -> {gain['srocc']:.3f} |",
                f"| golden tag mAP: heads-only -> fine-tuned | {base['map']:.3f} -> {gain['map']:.3f} |",
                f"| wall time: heads (features + fit) / fine-tune ({args.epochs} epochs) | "
                f"{heads_s:.0f} s / {ft_s:.0f} s |",
            ]
        ),
        f"| sizes | train {args.train}, validation {args.val}, golden {args.golden}; batch 8; "
        f"{args.unfreeze} block(s) unfrozen; throughput: {args.speed_images} images an epoch "
        f"(16 {kind}, cycled) |",
    ]
    sys.stdout.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
