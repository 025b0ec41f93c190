"""Many-models benchmark (issue 14): two models in one server against two servers, the cost of shadowing,
and the process hop of an isolated model. Writes a markdown table for docs/benchmarks.md.

    .venv/bin/python bench/multi.py                     # ~4 minutes on 2 cores
    .venv/bin/python bench/multi.py --seconds 15 --concurrency 16

1. **Two models**: one server answering both for each request (decoded once, two batchers) against two
   one-model servers on the same cores, each loaded with half the connections. Compared in model answers
   per second (images x models) and p99.
2. **Shadow**: the one-model server with a challenger computing 10% and 100% of requests in the
   background, against the same server without one.
3. **Process hop**: ``Predictor.predict`` in process against the same model in a worker process
   (serving/minions.py), one caller, batch 1 and 2 (the cost per call); then the one-model server with
   the model isolated against in process, under load.

Every server runs in a subprocess (uvicorn, one worker, loopback) started the same way, batch cap 2 (the
CPU default; no calibration, so that every server runs the same batches); the load generator is
bench/serving.py's raw client, in this process, on the same cores. One run, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# bench/ as a namespace package: `bench.serving` (a bare `serving` would be the product's package).
import bench.serving as bench_serving  # noqa: E402

MODES = ("one", "two", "shadow10", "shadow100", "isolated")


def bench_model(version: str | None = None):
    """The bench model (bench/serving.py's: real backbone, seeded heads, TorchScript): a module-level
    function, so an isolated worker can build it by reference."""
    return bench_serving.build_predictor(version=version or "bench")


def serve_forever(mode: str, port: int, max_batch: int) -> None:
    """Subprocess body: the app for ``mode`` on 127.0.0.1:port."""
    import uvicorn

    from lightbox.settings import Settings
    from serving.app import ModelSource, create_app
    from serving.minions import IsolatedPredictor
    from serving.runtime import apply_torch_threads, compute_layout

    shadow = {"shadow10": 0.1, "shadow100": 1.0}.get(mode, 0.0)
    settings = Settings(
        serve_max_batch_size=max_batch,
        serve_reload_interval_s=0,
        serve_max_queue=4096,
        # A throughput comparison: no request refused by the latency budget (429s would be answered in
        # microseconds and count as load).
        serve_max_latency_ms=120_000,
        serve_shadow_fraction=shadow,
        serve_shadow_record_interval_s=0,
    )
    layout = compute_layout(settings, "cpu")
    apply_torch_threads(layout)
    app: object
    if mode == "isolated":
        iso = IsolatedPredictor(
            bench_model, "bench", streams=layout.concurrent_batches, threads=layout.torch_threads
        )
        iso.warmup((1, max_batch))
        app = create_app(settings, iso)
    elif mode == "two":
        a, b = bench_model("a"), bench_model("b")
        a.warmup((1, max_batch))
        b.warmup((1, max_batch))
        app = create_app(settings, [ModelSource(a, name="a"), ModelSource(b, name="b")])
    else:
        p = bench_model()
        p.warmup((1, max_batch))
        rival = None
        if shadow:
            r = bench_model("challenger")
            r.warmup((1, max_batch))
            rival = ModelSource(r, name="lightbox@challenger")
        app = create_app(settings, p, challenger=rival)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)  # type: ignore[arg-type]


class Server(bench_serving.Server):
    """bench/serving.py's server wrapper, running this file's ``--serve MODE``."""

    def __init__(self, mode: str, max_batch: int, tag: str = "") -> None:
        self.port = bench_serving.free_port()
        cmd = [
            sys.executable,
            __file__,
            "--serve",
            mode,
            "--max-batch",
            str(max_batch),
            "--port",
            str(self.port),
        ]
        log_dir = ROOT / ".lightbox" / "bench"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(log_dir / f"multi-{mode}{tag}.log", "w")  # noqa: SIM115 (closed in __exit__)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.health_path = "/healthz"


def load(urls: list[str], jpegs: list[bytes], concurrency: int, seconds: float) -> dict:
    """``concurrency`` connections split over ``urls``, all at once; totals, and the worst p99."""
    share = max(1, concurrency // len(urls))

    async def both() -> list:
        return await asyncio.gather(*(bench_serving._load(u, jpegs, share, seconds, 100_000) for u in urls))

    asyncio.run(bench_serving._load(urls[0], jpegs, 2, 1.0, 20))  # warm connections and decode pools
    for u in urls[1:]:
        asyncio.run(bench_serving._load(u, jpegs, 2, 1.0, 20))
    rows = asyncio.run(both())
    return {
        "img_s": sum(r.img_s for r in rows),
        "p50_ms": max(r.p50_ms for r in rows),
        "p99_ms": max(r.p99_ms for r in rows),
        "rejected": sum(r.rejected for r in rows),
        "errors": sum(r.errors for r in rows),
    }


def hop(seconds: float) -> list[dict]:
    """One caller, batch 1 and 2: in process against the same model in a worker (ms per call)."""
    import torch

    from serving.minions import IsolatedPredictor

    torch.set_num_threads(1)
    local = bench_model()
    iso = IsolatedPredictor(bench_model, "bench", streams=1, threads=1)
    rows = []
    try:
        for batch in (1, 2):
            x = np.random.default_rng(0).integers(0, 256, (batch, 3, 224, 224), dtype=np.uint8)
            for label, p in (("in process", local), ("isolated", iso)):
                p.warmup((batch,))
                times = []
                end = time.perf_counter() + seconds
                while time.perf_counter() < end:
                    t = time.perf_counter()
                    p.predict(x)
                    times.append(time.perf_counter() - t)
                rows.append(
                    {
                        "where": label,
                        "batch": batch,
                        "p50_ms": statistics.median(times) * 1000,
                        "img_s": batch * len(times) / sum(times),
                    }
                )
                print(f"  hop {label:10s} batch {batch}: {rows[-1]['p50_ms']:.1f} ms p50", flush=True)
    finally:
        iso.close()
    return rows


def markdown(r: dict) -> str:
    s = r["servers"]
    one, two, apart = s["one"], s["two"], s["two servers"]
    lines = [
        f"Machine: {r['machine']}, shared with other work (noisy: repeat before trusting a few %). "
        f"{r['seconds']:.0f} s per point, {r['concurrency']} keep-alive connections, batch cap "
        f"{r['max_batch']}, 640x480 JPEGs, loopback; load generator on the same cores.",
        "",
        "| setup | model answers/s | requests/s | p50 ms | p99 ms | 429 | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    table = [
        ("one model, one server", one, 1),
        ("two models, one server (each request asks both)", two, 2),
        ("two models, two servers (half the connections each)", apart, 1),
        ("one model + shadow 10%", s["shadow10"], 1),
        ("one model + shadow 100%", s["shadow100"], 1),
        ("one model, isolated (worker process)", s["isolated"], 1),
    ]
    for label, row, models in table:
        lines.append(
            f"| {label} | {row['img_s'] * models:.1f} | {row['img_s']:.1f} | {row['p50_ms']:.0f} | "
            f"{row['p99_ms']:.0f} | {row['rejected']} | {row['errors']} |"
        )
    lines += [
        "",
        f"Two models in one server / two servers: **{two['img_s'] * 2 / apart['img_s']:.2f}x** the model "
        f"answers/s, p99 {two['p99_ms']:.0f} vs {apart['p99_ms']:.0f} ms. Shadow 10% / 100%: "
        f"**{s['shadow10']['img_s'] / one['img_s']:.2f}x / {s['shadow100']['img_s'] / one['img_s']:.2f}x** "
        f"the answered images/s of the same server without. Isolated / in process: "
        f"**{s['isolated']['img_s'] / one['img_s']:.2f}x** images/s, p50 {s['isolated']['p50_ms']:.0f} vs "
        f"{one['p50_ms']:.0f} ms.",
        "",
        "Process hop alone (one caller, `predict` on a uint8 batch, one torch thread each side):",
        "",
        "| where | batch | p50 ms/call | img/s |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {h['where']} | {h['batch']} | {h['p50_ms']:.1f} | {h['img_s']:.1f} |" for h in r["hop"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--max-batch", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--modes", default=",".join(MODES), help="servers to run (a rerun of a few)")
    p.add_argument("--out", type=Path, default=ROOT / ".lightbox" / "bench" / "multi.json")
    args = p.parse_args()
    if args.serve:
        serve_forever(args.serve, args.port, args.max_batch)
        return

    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "max_batch": args.max_batch,
        "servers": {},
    }
    jpegs = bench_serving.make_jpegs()
    modes = args.modes.split(",")
    if modes != list(MODES):  # a partial rerun: the rows only
        for mode in modes:
            with Server(mode, args.max_batch) as srv:
                row = load([srv.url + "/predict"], jpegs, args.concurrency, args.seconds)
            print(f"  {mode:10s}: {row}", flush=True)
        return
    print("process hop:", flush=True)
    results["hop"] = hop(min(args.seconds, 4.0))
    for mode in MODES:
        with Server(mode, args.max_batch) as srv:
            row = load([srv.url + "/predict"], jpegs, args.concurrency, args.seconds)
        results["servers"][mode] = row
        print(f"  {mode:10s}: {row}", flush=True)
    with Server("one", args.max_batch, "-a") as a, Server("one", args.max_batch, "-b") as b:
        row = load([a.url + "/predict", b.url + "/predict"], jpegs, args.concurrency, args.seconds)
    results["servers"]["two servers"] = row
    print(f"  two servers: {row}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("\n" + markdown(results))


if __name__ == "__main__":
    main()
