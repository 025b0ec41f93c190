"""Serving benchmark: the model's own ceiling, this server under a concurrency sweep, and the same model
served per request without batching. Writes a markdown table (docs/benchmarks.md takes it verbatim).

    .venv/bin/python bench/serving.py                 # defaults sized for a 2-core box (~3 minutes)
    .venv/bin/python bench/serving.py --seconds 10 --concurrency 1,4,16,64,128 --ray

The server runs in a subprocess (uvicorn, one worker, loopback) so that the load generator (httpx) and
the server do not share one GIL; on a small machine they still share the cores, which the table notes.
Images are 640x480 JPEGs, decoded and resized by the server as in production. The model has the real
pretrained backbone and untrained heads: the compute is the production model's.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_jpegs(n: int = 16, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    from PIL import Image

    out = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        w, h = size
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build_predictor(name: str = "lightbox", version: str = "bench"):
    import torch

    from lightbox.settings import TAG_VOCABULARY
    from serving.predictor import Predictor
    from training.model import Heads, LightboxModel, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(tag_names=TAG_VOCABULARY)
    return Predictor.from_model(LightboxModel(config, Heads(config)), name, version)


# --- 1. the model alone ---------------------------------------------------------------------------


def bench_model(batch_sizes: list[int], seconds: float, jpegs: list[bytes]) -> dict:
    from lightbox.imaging import preprocess_bytes

    predictor = build_predictor()
    t0 = time.perf_counter()
    decoded = [preprocess_bytes(b) for b in jpegs]
    decode_ms = (time.perf_counter() - t0) / len(jpegs) * 1000
    rows = []
    for n in batch_sizes:
        batch = np.stack([decoded[i % len(decoded)] for i in range(n)])
        predictor.predict(batch)  # warm-up
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            predictor.predict(batch)
            count += 1
        elapsed = time.perf_counter() - start
        rows.append({"batch": n, "img_s": count * n / elapsed, "batch_ms": elapsed / count * 1000})
        print(
            f"  model batch={n:4d}: {rows[-1]['img_s']:8.1f} img/s  {rows[-1]['batch_ms']:8.1f} ms/batch",
            flush=True,
        )
    return {"decode_ms_per_image": decode_ms, "rows": rows, "device": str(predictor.device)}


# --- 2. the server ----------------------------------------------------------------------------------


def serve_forever(port: int, max_batch: int, max_wait_ms: float, max_queue: int) -> None:
    """Subprocess body: the app on 127.0.0.1:port."""
    import uvicorn

    from lightbox.settings import Settings
    from serving.app import create_app

    settings = Settings(
        serve_max_batch_size=max_batch,
        serve_max_wait_ms=max_wait_ms,
        serve_max_queue=max_queue,
        serve_reload_interval_s=0,
    )
    predictor = build_predictor()
    predictor.warmup((1, max_batch))
    uvicorn.run(
        create_app(settings, predictor), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args: list[str], health_path: str = "/healthz") -> None:
        self.port = free_port()
        cmd = [sys.executable, __file__, *args, "--port", str(self.port)]
        log_dir = ROOT / ".lightbox" / "bench"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(log_dir / f"server-{args[0].strip('-')}.log", "w")  # noqa: SIM115 (closed in __exit__)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.health_path = health_path

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + self.health_path, timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError("server did not become healthy")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    ok: int
    rejected: int
    errors: int
    img_s: float
    p50_ms: float
    p99_ms: float


async def _load(
    url: str, jpegs: list[bytes], concurrency: int, seconds: float, max_requests: int
) -> LoadResult:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    statuses: list[int] = []
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def worker(i: int) -> None:
            k = i
            while time.perf_counter() < deadline and len(statuses) < max_requests:
                body = jpegs[k % len(jpegs)]
                k += concurrency
                t = time.perf_counter()
                try:
                    r = await client.post(url, content=body, headers={"content-type": "image/jpeg"})
                    status = r.status_code
                except httpx.HTTPError:
                    status = -1
                if status == 200:
                    latencies.append(time.perf_counter() - t)
                statuses.append(status)

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    ok = statuses.count(200)
    lat = sorted(latencies) or [float("nan")]
    return LoadResult(
        concurrency=concurrency,
        requests=len(statuses),
        ok=ok,
        rejected=statuses.count(429),
        errors=len(statuses) - ok - statuses.count(429),
        img_s=ok / elapsed,
        p50_ms=statistics.median(lat) * 1000,
        p99_ms=lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000,
    )


def sweep(
    url: str, jpegs: list[bytes], levels: list[int], seconds: float, max_requests: int, label: str
) -> list[dict]:
    rows = []
    asyncio.run(_load(url, jpegs, 2, 1.0, 20))  # warm connections and the decode pool
    for c in levels:
        r = asyncio.run(_load(url, jpegs, c, seconds, max_requests))
        rows.append(asdict(r))
        print(
            f"  {label} c={c:4d}: {r.img_s:7.1f} img/s  p50 {r.p50_ms:7.1f} ms  p99 {r.p99_ms:7.1f} ms"
            f"  ok {r.ok} 429 {r.rejected} err {r.errors}",
            flush=True,
        )
    return rows


# --- 3. Ray Serve with @serve.batch (optional) --------------------------------------------------------


def ray_serve_forever(port: int, max_batch: int, max_wait_ms: float) -> None:
    """Subprocess body: the same model behind Ray Serve's own batcher on 127.0.0.1:port."""
    import ray
    from ray import serve
    from starlette.requests import Request

    from lightbox.imaging import preprocess_bytes

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    # Access logs off: one line per request would cost Ray what ours does not pay (access_log=False).
    @serve.deployment(
        max_ongoing_requests=256, logging_config={"enable_access_log": False, "log_level": "WARNING"}
    )
    class Lightbox:
        def __init__(self) -> None:
            self.predictor = build_predictor()

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=max_wait_ms / 1000)
        async def infer(self, images: list[np.ndarray]) -> list[dict]:
            scores, probs = self.predictor.predict(np.stack(images))
            return [{"score": float(s), "tag_probs": p.tolist()} for s, p in zip(scores, probs, strict=True)]

        async def __call__(self, request: Request) -> dict:
            image = preprocess_bytes(await request.body())
            return await self.infer(image)

    serve.run(Lightbox.bind(), route_prefix="/predict", blocking=False)
    while True:
        time.sleep(3600)


# --- report ------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    m = results["model"]
    best = max(m["rows"], key=lambda r: r["img_s"])
    lines = [
        f"Machine: {results['machine']}. Device: {m['device']}. Images: 640x480 JPEG. "
        f"{results['seconds']:.0f} s per point (or {results['max_requests']} requests).",
        "",
        "**Model alone** (in-process `Predictor.predict`, preprocessed uint8 batches; the ceiling):",
        "",
        "| batch | img/s | ms/batch |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {r['batch']} | {r['img_s']:.1f} | {r['batch_ms']:.1f} |" for r in m["rows"]]
    lines += [
        "",
        f"Decode + resize of one 640x480 JPEG (one thread): {m['decode_ms_per_image']:.1f} ms.",
        "",
        "**Over HTTP** (`POST /predict`, raw JPEG body, httpx client in another process):",
        "",
        "| server | concurrency | img/s | p50 ms | p99 ms | 429 | errors | vs. model ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, rows in results["servers"].items():
        for r in rows:
            lines.append(
                f"| {label} | {r['concurrency']} | {r['img_s']:.1f} | {r['p50_ms']:.0f} | "
                f"{r['p99_ms']:.0f} | {r['rejected']} | {r['errors']} | {r['img_s'] / best['img_s']:.0%} |"
            )
    peaks = {label: max(r["img_s"] for r in rows) for label, rows in results["servers"].items()}
    lines += ["", "Peak throughput: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in peaks.items()) + "."]
    base = peaks.get("per-request (batch 1)")
    if base:
        lines += [
            "Ratios to per-request serving: "
            + ", ".join(f"{k} {v / base:.2f}x" for k, v in peaks.items() if k != "per-request (batch 1)")
            + "."
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ray-serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--max-batch", type=int, default=8, help="the server's CPU default")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-queue", type=int, default=512)
    p.add_argument("--seconds", type=float, default=6.0, help="per sweep point")
    p.add_argument("--max-requests", type=int, default=1500, help="per sweep point")
    p.add_argument("--concurrency", default="1,4,16,64,128")
    p.add_argument("--baseline-concurrency", default="1,16,64")
    p.add_argument("--batch-sizes", default="1,4,8,16,32,64")
    p.add_argument("--ray", action="store_true", help="also Ray Serve with @serve.batch (needs ray[serve])")
    p.add_argument("--out", type=Path, default=ROOT / ".lightbox" / "bench" / "serving.json")
    args = p.parse_args()

    if args.serve:
        serve_forever(args.port, args.max_batch, args.max_wait_ms, args.max_queue)
        return
    if args.ray_serve:
        ray_serve_forever(args.port, args.max_batch, args.max_wait_ms)
        return

    jpegs = make_jpegs()
    levels = [int(x) for x in args.concurrency.split(",")]
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        "seconds": args.seconds,
        "max_requests": args.max_requests,
        "servers": {},
    }
    print("model alone:", flush=True)
    results["model"] = bench_model(
        [int(x) for x in args.batch_sizes.split(",")], min(args.seconds, 4.0), jpegs
    )

    common = ["--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(args.max_queue)]
    print("lightbox server (dynamic batching):", flush=True)
    with Server(["--serve", "--max-batch", str(args.max_batch), *common]) as srv:
        label = f"lightbox (batch<={args.max_batch}, wait {args.max_wait_ms:g} ms)"
        results["servers"][label] = sweep(
            srv.url + "/predict", jpegs, levels, args.seconds, args.max_requests, "batched"
        )
    print("same server, per request (max batch 1):", flush=True)
    baseline = [int(x) for x in args.baseline_concurrency.split(",")]
    with Server(["--serve", "--max-batch", "1", *common]) as srv:
        results["servers"]["per-request (batch 1)"] = sweep(
            srv.url + "/predict", jpegs, baseline, args.seconds, args.max_requests, "per-request"
        )
    if args.ray:
        print("Ray Serve (@serve.batch):", flush=True)
        with Server(
            ["--ray-serve", "--max-batch", str(args.max_batch), *common], health_path="/-/healthz"
        ) as srv:
            label = f"Ray Serve @serve.batch (batch<={args.max_batch})"
            results["servers"][label] = sweep(
                srv.url + "/predict", jpegs, levels, args.seconds, args.max_requests, "ray"
            )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("\n" + markdown(results))


if __name__ == "__main__":
    main()
