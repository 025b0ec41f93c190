"""Costlier photos after cheap ones: does admission keep its promise from the first request of the burst?

    .venv/bin/python bench/costly_photos.py                  # ~3 minutes on 2 cores
    .venv/bin/python bench/costly_photos.py --photo jpeg     # camera-size JPEGs instead of phone HEICs

The server learns its CPU per image from the traffic it serves. Here it first serves 640x480 JPEGs
(``--warm-s``), then ``--clients`` clients switch to 12 MP photos (HEIC by default: 27x a JPEG's decode,
docs/benchmarks.md) for ``--burst-s``; a refused client waits what ``Retry-After`` says. Each run is
done with admission weighing photos by their decode cost (``LIGHTBOX_SERVE_WEIGH_DECODES``, the default)
and without, alternating (off, on, off, on, ...), every run on a fresh server. The table gives, for the
burst's first seconds and for the whole burst, the requests admitted, their p50 and largest latency, how
many were answered past the budget, and the 429s. Only ratios from one run mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.decode_formats as decode_formats  # noqa: E402
import bench.serving as bench_serving  # noqa: E402

Sample = tuple[float, int, float]  # (sent, seconds after the burst began; status; latency seconds)


async def _clients(url: str, bodies: list[bytes], clients: int, seconds: float, t0: float) -> list[Sample]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    samples: list[Sample] = []
    deadline = time.perf_counter() + seconds

    async def client(i: int) -> None:
        conn = bench_serving._Connection(parts.hostname or "127.0.0.1", parts.port or 80)
        k = i
        try:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                try:
                    status = await asyncio.wait_for(
                        conn.post("/predict", bodies[k % len(bodies)], "image/*"), 60
                    )
                except bench_serving._TRANSPORT_ERRORS:
                    status = -1
                    await conn.close()
                samples.append((sent - t0, status, time.perf_counter() - sent))
                k += clients
                if status == 429:
                    retry = float(conn.retry_after or 1)
                    await asyncio.sleep(max(0.0, min(retry, deadline - time.perf_counter())))
        finally:
            await conn.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return samples


def one_run(weigh: bool, args: argparse.Namespace, small: list[bytes], costly: list[bytes]) -> list[Sample]:
    os.environ["LIGHTBOX_SERVE_WEIGH_DECODES"] = "true" if weigh else "false"
    os.environ["LIGHTBOX_SERVE_MAX_LATENCY_MS"] = str(args.budget_ms)
    server_cores, client_cores = bench_serving.split_cores(args.client_cores)
    name = f"costly-{'on' if weigh else 'off'}"
    with bench_serving.Server(["--serve", "--runtime", "onnxruntime"], name=name, cpus=server_cores) as srv:
        os.sched_setaffinity(0, client_cores)
        try:
            start = time.perf_counter()
            bench_serving.run_client(_clients(srv.url, small, args.clients, args.warm_s, start))
            burst = time.perf_counter()
            return bench_serving.run_client(_clients(srv.url, costly, args.clients, args.burst_s, burst))
        finally:
            os.sched_setaffinity(0, server_cores | client_cores)


def summary(samples: list[Sample], within_s: float, budget_s: float) -> str:
    part = [s for s in samples if s[0] < within_s]
    ok = sorted(lat for _, status, lat in part if status == 200)
    over = sum(1 for lat in ok if lat > budget_s)
    refused = sum(1 for _, status, _ in part if status == 429)
    errors = sum(1 for _, status, _ in part if status not in (200, 429))
    p50 = f"{1000 * statistics.median(ok):,.0f}" if ok else "-"
    top = f"{1000 * ok[-1]:,.0f}" if ok else "-"
    return f"{len(ok)} | {p50} / {top} | {over} | {refused} | {errors}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photo", choices=("heic", "jpeg"), default="heic")
    p.add_argument("--size", default="4032x3024")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--warm-s", type=float, default=6.0)
    p.add_argument("--burst-s", type=float, default=12.0)
    p.add_argument("--first-s", type=float, default=4.0, help="the burst's first seconds, reported apart")
    p.add_argument("--budget-ms", type=float, default=1000.0)
    p.add_argument("--pairs", type=int, default=2, help="off/on rounds, alternating")
    p.add_argument("--client-cores", type=int, default=1)
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    small = bench_serving.make_jpegs(8)
    if args.photo == "heic":
        costly = [decode_formats.encoded((w, h))["HEIF"]]
    else:
        costly = []
        for photo in bench_serving.make_jpegs(2):
            buf = io.BytesIO()
            Image.open(io.BytesIO(photo)).resize((w, h), Image.Resampling.BICUBIC).save(
                buf, "JPEG", quality=95
            )
            costly.append(buf.getvalue())
    budget = args.budget_ms / 1000
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.clients} clients, "
        f"{args.warm_s:g} s of 640x480 JPEGs, then {args.burst_s:g} s of {w}x{h} {args.photo.upper()} "
        f"({len(costly[0]) / 1e6:.2f} MB); budget {args.budget_ms:g} ms\n"
    )
    print(
        f"| run | weighs decodes | first {args.first_s:g} s: admitted | p50 / max ms | over budget | 429 "
        "| errors | whole burst: admitted | p50 / max ms | over budget | 429 | errors |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for i in range(args.pairs):
        for weigh in (False, True):
            samples = one_run(weigh, args, small, costly)
            first = summary(samples, args.first_s, budget)
            whole = summary(samples, float("inf"), budget)
            print(f"| {i + 1} | {'yes' if weigh else 'no'} | {first} | {whole} |", flush=True)


if __name__ == "__main__":
    main()
