"""Bulk scoring throughput against its limits, side by side in one run on one machine.

    .venv/bin/python bench/bulk.py [--photos 1000] [--camera 200] [--markdown]   # sized for 2 cores
    .venv/bin/python bench/bulk.py --photos 5000 --camera 1000                    # a bigger machine

The catalog: ``--photos`` JPEGs at 640x480 and ``--camera`` at camera size (3000x2000). Measured:
  (a) model-bound: the model alone on pre-decoded tensors, at its best CPU layout (batches side by side
      on one thread each, or one batch on every core) and the runtime the loader picks (ONNX Runtime when
      the version's export passed the gates, else TorchScript);
  (b) decode-bound: read + decode + resize alone (lightbox.imaging.preprocess_bytes) on every core;
  (c) a naive loop: read, decode, then predict one image at a time, in one process;
  (d) the Ray Data pipeline (pipelines/score_catalog.run, parquet out), end to end and its marginal rate
      (the whole catalog minus a quarter of it: Ray start and model load cancel out; the median of
      ``--repeats`` pairs); its steady rate within one run (from a quarter of its results to the last);
      also its rate from its first results to its last, which is higher than a steady rate where read
      tasks decode ahead while the model actors load; ``--also`` runs other layouts end to end.
And the combined limit when model and decode share the cores: an image costs cores/a core-seconds of
model and cores/b of decode, so ``cores`` cores finish 1 / (1/a + 1/b) images/s. Peak memory: the RSS
of this process and every process under it (the local Ray's daemons and workers), sampled during (d),
at both catalog sizes.

The model is the registered champion of LIGHTBOX_* settings with ``--use-settings``; by default a sample
version (seeded heads on the real extractor, tests/registry_samples.py) in a temporary registry, judged
by the gates (pipelines/validate_model.run on the smallest synthetic golden set) so that its runtime tags
are the ones a champion carries: (a), (c) and (d) all load it through RegistryLoader and run the runtime
it picks for a champion.
Only ratios measured in one run on one machine mean anything (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before bench/: bench/serving.py would shadow the serving package
PHOTO = (640, 480)
CAMERA = (3000, 2000)
READ_WARMUP = 16  # images of the unmeasured first pipeline run


def write_catalog(root: Path, photos: int, camera: int) -> list[Path]:
    """Smooth random content (photo-like entropy, so JPEG sizes and decode costs are realistic)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(photos + camera):
        size = PHOTO if i < photos else CAMERA
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8))
        noise = rng.integers(-12, 13, (size[1], size[0], 3))
        img = np.asarray(small.resize(size, Image.Resampling.BICUBIC), np.int16) + noise
        path = root / f"{'photo' if i < photos else 'camera'}_{i:06d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def interleaved(paths: list[Path], photos: int) -> list[Path]:
    """The catalog in a mixed order (camera files spread evenly), as a real catalog is."""
    camera = paths[photos:]
    if not camera:
        return list(paths)
    step = max(1, photos // len(camera))
    out: list[Path] = []
    for i, p in enumerate(paths[:photos]):
        out.append(p)
        if i % step == step - 1 and camera:
            out.append(camera.pop(0))
    return out + camera


# --- (b) decode ---------------------------------------------------------------------------------------


def _decode(path: str) -> int:
    from lightbox.imaging import preprocess_bytes

    return int(preprocess_bytes(Path(path).read_bytes()).shape[0])


def decode_rate(paths: list[Path], cores: int) -> float:
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(_decode, [str(p) for p in paths[: cores * 2]]))  # start the workers and imports
        t0 = time.perf_counter()
        list(pool.map(_decode, [str(p) for p in paths], chunksize=4))
        return len(paths) / (time.perf_counter() - t0)


# --- (a) model: one layout per subprocess (torch's thread count is process-wide) ----------------------


def model_layout(project: str, streams: int, threads: int, batch: int, seconds: float) -> dict:
    """Subprocess body: ``streams`` threads each predicting its own batch of ``batch``, torch (and so the
    ONNX Runtime session, created after) on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    from lightbox.settings import Settings
    from training.predictor import RegistryLoader

    settings = Settings(project_dir=Path(project))
    predictor = RegistryLoader(settings, settings.champion_alias).load()
    x = np.random.default_rng(0).integers(0, 256, (batch, 3, 224, 224), dtype=np.uint8)
    predictor.predict(x)
    done = [0] * streams
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            predictor.predict(x)
            done[i] += batch

    t0 = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(streams)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"runtime": predictor.runtime, "img_s": sum(done) / (time.perf_counter() - t0)}


def model_rate(project: Path, cores: int, batch: int, seconds: float) -> dict:
    rows = []
    for streams, threads in sorted({(cores, 1), (1, cores)}):
        args = [str(project), str(streams), str(threads), str(batch), str(seconds)]
        out = subprocess.run(
            [sys.executable, __file__, "--model-layout", *args],
            env=_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(
            {"streams": streams, "threads": threads, **json.loads(out.stdout.strip().splitlines()[-1])}
        )
    return max(rows, key=lambda r: r["img_s"]) | {"layouts": rows}


# --- (c) naive ----------------------------------------------------------------------------------------


def naive_rate(project: Path, paths: list[Path]) -> dict:
    """In a fresh process, as a naive script runs (this one has registered a model and forked a pool)."""
    listing = project / "naive.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    out = subprocess.run(
        [sys.executable, __file__, "--naive", str(project), str(listing)],
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def naive_loop(project: Path, paths: list[Path]) -> dict:
    """Subprocess body: read, decode, predict one image at a time."""
    from lightbox.imaging import preprocess_bytes
    from lightbox.settings import Settings
    from training.predictor import RegistryLoader

    settings = Settings(project_dir=project)
    predictor = RegistryLoader(settings, settings.champion_alias).load()
    predictor.predict(preprocess_bytes(paths[0].read_bytes())[None])
    t0 = time.perf_counter()
    for p in paths:
        predictor.predict(preprocess_bytes(p.read_bytes())[None])
    return {"runtime": predictor.runtime, "img_s": len(paths) / (time.perf_counter() - t0)}


# --- (d) the pipeline, with the process tree's memory ------------------------------------------------


class PeakRss:
    """Peak of the summed RSS of this process and all its descendants, sampled every 0.2 s; and the CPU
    seconds each kind of process used meanwhile (``cpu_s``: driver, model actor, read tasks, Ray's
    daemons; a process's last sample, so up to 0.2 s of a process that exits is missed)."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak = 0
        self._cpu: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds since the start)
        self._start = self._cpu_total(self.me)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _cpu_total(p: object) -> float:
        t = p.cpu_times()  # type: ignore[attr-defined]
        return float(t.user + t.system)

    def _kind(self, p: object) -> str:
        if p is self.me:
            return "driver"
        title = " ".join(p.cmdline())  # type: ignore[attr-defined]
        if "MapWorker" in title or "Scorer" in title:
            return "model actor"
        if title.startswith("ray::"):
            return "" if title.startswith("ray::IDLE") else "read tasks"  # "": not known yet
        return "ray daemons"

    def _sample(self) -> int:
        import psutil

        total = 0
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
                cpu = self._cpu_total(p) - (self._start if p is self.me else 0.0)
                kind = self._kind(p) or self._cpu.get(p.pid, ("ray workers (idle)", 0.0))[0]
            except psutil.Error:
                continue
            self._cpu[p.pid] = (kind, cpu)
        return total

    @property
    def cpu_s(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, seconds in self._cpu.values():
            out[kind] = out.get(kind, 0.0) + seconds
        return {k: round(v, 1) for k, v in sorted(out.items())}

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def pipeline_run(
    project: Path, paths: list[Path], out: Path, cores: int, batch: int, layout: dict | None = None
) -> dict:
    """One run of (d); ``layout``: score_* settings (actors, actor_threads)."""
    from lightbox.settings import Settings
    from pipelines import score_catalog

    listing = out.with_suffix(".txt")
    listing.write_text("".join(f"{p}\n" for p in paths))
    # The batch of (a), not calibrated at actor start: a calibration's length varies from run to run, and
    # the marginal rate assumes the two runs' fixed costs are equal.
    settings = Settings(
        project_dir=project,
        ray_num_cpus=cores,
        score_batch_size=batch,
        **{f"score_{k}": v for k, v in (layout or {}).items()},
    )
    with PeakRss() as rss:
        result = score_catalog.run(settings, str(listing), str(out))
    assert result.scored == len(paths), result.summary()
    return {
        "images": len(paths),
        "seconds": result.seconds,
        "streaming_img_s": result.streaming_images_per_s or 0.0,
        "steady_img_s": result.steady_images_per_s or 0.0,
        "first_results_s": result.first_results_s or 0.0,
        "peak_rss_mb": rss.peak / 2**20,
        "cpu_s": rss.cpu_s,
    }


# --- the run -------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return dict(os.environ) | {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}


def _project(use_settings: bool, tmp: Path) -> tuple[Path, str]:
    """The project whose champion is measured, and the runtime its gates recorded for CPU."""
    from lightbox.adapters import mlflow_registry

    if use_settings:
        from lightbox.settings import load_settings

        settings = load_settings()
        champion = mlflow_registry.version_or_none(settings, settings.champion_alias)
        return settings.project_dir, "" if champion is None else (champion.tags or {}).get(
            mlflow_registry.RUNTIME_CPU_TAG, ""
        )
    sys.path.insert(0, str(ROOT / "tests"))
    from photo_samples import synthetic_spec
    from registry_samples import register_champion

    from lightbox.manifest import write_label_spec
    from lightbox.settings import Settings
    from pipelines import golden, validate_model

    # Judged by the gates as a trained version is (the smallest synthetic golden set), so the runtime
    # check records which runtime serves it on CPU and every loader below picks what a champion's picks.
    # Its seeded heads fail the quality gates; the runtime tags are recorded whatever the verdict.
    settings = Settings(project_dir=tmp / "project", golden_sources=1)
    spec = synthetic_spec()
    version = register_champion(settings, label_spec=spec.to_dict())
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    write_label_spec(settings.data_dir, spec)
    golden.run(settings)
    report = validate_model.run(settings, version)
    return settings.project_dir, report.runtime_tags.get(mlflow_registry.RUNTIME_CPU_TAG, "")


def run(args: argparse.Namespace) -> dict:
    from serving.runtime import usable_cores  # the count the server sizes from (affinity and cgroup)

    cores = args.cores or usable_cores()
    with tempfile.TemporaryDirectory(prefix="lightbox-bench-bulk-") as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        project, gated_runtime = _project(args.use_settings, tmp)
        (tmp / "catalog").mkdir()
        paths = interleaved(write_catalog(tmp / "catalog", args.photos, args.camera), args.photos)
        setup_s = time.perf_counter() - t0

        a = model_rate(project, cores, args.batch, args.model_seconds)
        b = decode_rate(paths, cores)
        sample = paths[:: max(1, len(paths) // args.naive_images)]  # the catalog's mix, fewer images
        naive = naive_rate(project, sample)
        c = naive["img_s"]
        # Unmeasured: the first Ray start in a process pays one-time costs (imports, cold files) that
        # the two measured runs must not differ by, or the marginal rate is off.
        pipeline_run(project, paths[:READ_WARMUP], tmp / "scores-warmup", cores, args.batch)
        # Pairs of runs, alternating: the marginal rate of one pair moves by 10-20% with a second's
        # difference in the two runs' fixed costs; the median of the pairs is the figure.
        quarter_paths = paths[: len(paths) // 4]
        pairs = [
            (
                pipeline_run(project, quarter_paths, tmp / f"scores-quarter{i}", cores, args.batch),
                pipeline_run(project, paths, tmp / f"scores-whole{i}", cores, args.batch),
            )
            for i in range(args.repeats)
        ]
        quarter, whole = pairs[-1]
        # The same pipeline in other layouts (LIGHTBOX_SCORE_ACTORS, _ACTOR_THREADS, _DECODE), the whole
        # catalog once each; a list, not a dict by layout: one may be asked for twice, to alternate.
        alt = [
            (
                text,
                pipeline_run(project, paths, tmp / f"scores-alt{i}", cores, args.batch, parse_layout(text)),
            )
            for i, text in enumerate(args.also)
        ]

    combined = 1 / (1 / a["img_s"] + 1 / b)
    d_end_to_end = whole["images"] / whole["seconds"]
    marginals = [_marginal(q, w) for q, w in pairs]
    steadies = [w["steady_img_s"] for _, w in pairs]
    d_marginal, d_steady = statistics.median(marginals), statistics.median(steadies)
    return {
        "cores": cores,
        "photos_640x480": args.photos,
        "camera_3000x2000": args.camera,
        "setup_s": round(setup_s, 1),
        "gated_runtime": gated_runtime,
        "a_model_img_s": round(a["img_s"], 1),
        "a_runtime": a["runtime"],
        "a_layout": f"{a['streams']} x {a['threads']} thr, batch {args.batch}",
        "a_layouts": [
            {k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()} for r in a["layouts"]
        ],
        "b_decode_img_s": round(b, 1),
        "combined_limit_img_s": round(combined, 1),
        "c_naive_img_s": round(c, 1),
        "c_naive_images": len(sample),
        "c_runtime": naive["runtime"],
        "d_end_to_end_img_s": round(d_end_to_end, 1),
        "d_marginal_img_s": round(d_marginal, 1),
        "d_marginals_img_s": [round(m, 1) for m in marginals],
        "d_streaming_img_s": round(whole["streaming_img_s"], 1),
        "d_steady_img_s": round(d_steady, 1),
        "d_steadies_img_s": [round(v, 1) for v in steadies],
        "d_over_c": round(d_marginal / c, 2),
        "d_over_combined_limit": round(d_marginal / combined, 2),
        "d_steady_over_c": round(d_steady / c, 2),
        "d_steady_over_combined_limit": round(d_steady / combined, 2),
        "d_cpu_bound_img_s": round(statistics.median(_cpu_bound(q, w, cores) for q, w in pairs), 1),
        "d_runs": [_rounded(quarter), _rounded(whole)],
        "d_other_layouts": [{"layout": text, **_rounded(w)} for text, w in alt],
    }


def _marginal(quarter: dict, whole: dict) -> float:
    return (whole["images"] - quarter["images"]) / max(1e-9, whole["seconds"] - quarter["seconds"])


def parse_layout(text: str) -> dict:
    """``actors=2,actor_threads=1,decode=tasks`` -> the score_* settings it names."""
    known = {"actors": int, "actor_threads": int, "decode": str}
    layout = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in known:
            raise SystemExit(f"unknown layout key {key!r} in {text!r}: use {', '.join(known)}")
        layout[key] = known[key](value)
    return layout


def _cpu_bound(quarter: dict, whole: dict, cores: int) -> float:
    """The most images/s the extra images' CPU seconds allow on ``cores``: a check on the marginal rate,
    whose time difference is off by however much the two runs' fixed costs differ."""
    extra_cpu = sum(whole["cpu_s"].values()) - sum(quarter["cpu_s"].values())
    return (whole["images"] - quarter["images"]) * cores / max(1e-9, extra_cpu)


def _rounded(row: dict) -> dict:
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}


def markdown(r: dict) -> str:
    q, w = r["d_runs"]
    rows = [
        (f"(a) model alone, {r['a_runtime']}, {r['a_layout']}", r["a_model_img_s"]),
        (f"(b) read + decode + resize alone, {r['cores']} processes", r["b_decode_img_s"]),
        ("limit when they share the cores, 1 / (1/a + 1/b)", r["combined_limit_img_s"]),
        (
            f"(c) naive loop, one image at a time, {r['c_runtime']} ({r['c_naive_images']} images, same mix)",
            r["c_naive_img_s"],
        ),
        (
            f"(d) Ray Data pipeline, after its first results ({w['first_results_s']} s) to the last, incl."
            " images decoded ahead during the model load: not a steady rate",
            r["d_streaming_img_s"],
        ),
        (
            f"(d) Ray Data pipeline, marginal ({w['images']} - {q['images']} images), median of"
            f" {', '.join(map(str, r['d_marginals_img_s']))}",
            r["d_marginal_img_s"],
        ),
        (
            f"(d) Ray Data pipeline, steady: from a quarter of the results to the last, median of"
            f" {', '.join(map(str, r['d_steadies_img_s']))}",
            r["d_steady_img_s"],
        ),
        (
            "(d) Ray Data pipeline, end to end incl. Ray start and model load",
            r["d_end_to_end_img_s"],
        ),
        *(
            (
                f"(d) end to end, layout {alt['layout']}"
                f" (steady {alt['steady_img_s']}; CPU s: {_cpu_text(alt)})",
                round(alt["images"] / alt["seconds"], 1),
            )
            for alt in r["d_other_layouts"]
        ),
    ]
    head = (
        f"{r['photos_640x480']} photos at 640x480 + {r['camera_3000x2000']} at 3000x2000, {r['cores']} cores:"
    )
    return "\n".join(
        [
            head,
            "",
            "| | images/s |",
            "|---|---:|",
            *(f"| {name} | {value} |" for name, value in rows),
            "",
            f"(d)/(c) = {r['d_over_c']}; (d)/limit = {r['d_over_combined_limit']} (marginal); steady"
            f" {r['d_steady_over_c']} and {r['d_steady_over_combined_limit']}; the extra images' CPU "
            f"seconds allow at most {r['d_cpu_bound_img_s']} images/s on {r['cores']} cores. "
            "Peak RSS (driver + Ray): "
            f"{q['peak_rss_mb']:.0f} MB at {q['images']} images, {w['peak_rss_mb']:.0f} MB at {w['images']}.",
            f"CPU seconds during (d) at {w['images']} images: " + _cpu_text(w) + ".",
        ]
    )


def _cpu_text(run: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in run["cpu_s"].items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=1000, help="JPEGs at 640x480")
    p.add_argument("--camera", type=int, default=200, help="JPEGs at 3000x2000")
    p.add_argument("--cores", type=int, default=None, help="default: the cores this process may use")
    p.add_argument("--batch", type=int, default=16, help="model batch for (a)")
    p.add_argument("--model-seconds", type=float, default=8.0)
    p.add_argument("--repeats", type=int, default=2, help="(d): pairs of runs (a quarter, the whole)")
    p.add_argument("--naive-images", type=int, default=200, help="(c) runs on this many, the catalog's mix")
    p.add_argument("--use-settings", action="store_true", help="the champion of the LIGHTBOX_* settings")
    p.add_argument(
        "--also",
        nargs="*",
        default=[],
        metavar="LAYOUT",
        help="also run (d) in these layouts, e.g. actors=1,actor_threads=1",
    )
    p.add_argument("--markdown", action="store_true", help="also print the docs/benchmarks.md table")
    p.add_argument("--model-layout", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--naive", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.naive:
        project, listing = args.naive
        paths = [Path(line) for line in Path(listing).read_text().splitlines()]
        print(json.dumps(naive_loop(Path(project), paths)))
        return
    if args.model_layout:
        project, streams, threads, batch, seconds = args.model_layout
        print(json.dumps(model_layout(project, int(streams), int(threads), int(batch), float(seconds))))
        return
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.markdown:
        print(markdown(result))


if __name__ == "__main__":
    main()
