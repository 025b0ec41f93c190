"""Clients that give up: answers in time when new clients arrive faster than the server answers and each
waits only ``--timeout-ms``, with and without saying so (``?timeout_ms=``).

    .venv/bin/python bench/impatient_clients.py              # ~2 minutes on 2 cores

Open loop: a new connection every 1/``--rate`` s posts one 640x480 JPEG and closes its connection when
its timeout passes (as a phone app or a proxy does). Alternating runs, each on a fresh server: the
clients say nothing (the server judges them by its 1 s budget, serves its queue oldest first, and takes
a client's images out of the queue only once it has left), or they send their timeout (the server
refuses at once those it cannot answer in time, and fails uncomputed those whose deadline passes in the
queue). The table gives the answers each second that came within the timeout, the images the model
computed each second, and the answers by status. Only ratios from one run mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.serving as bench_serving  # noqa: E402


async def _one(port: int, body: bytes, path: str, timeout_s: float) -> str:
    """One client: its status, "gave up" past its timeout, or "error"."""
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
    except (OSError, TimeoutError):
        return "error"
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.writelines([head.encode(), body])
        left = timeout_s - (time.perf_counter() - start)
        line = await asyncio.wait_for(reader.readline(), max(0.001, left))
        return line.decode("latin-1").split(" ", 2)[1]
    except TimeoutError:
        return "gave up"
    except (OSError, IndexError, asyncio.IncompleteReadError):
        return "error"
    finally:
        writer.close()


async def _arrivals(
    port: int, body: bytes, path: str, rate: float, seconds: float, timeout_s: float
) -> Counter:
    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(_one(port, body, path, timeout_s)))
    return Counter(await asyncio.gather(*tasks))


def _computed(srv: bench_serving.Server) -> float:
    import httpx

    text = httpx.get(srv.url + "/metrics", timeout=10).text
    return sum(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("lightbox_images_total")
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=120.0, help="new clients per second")
    p.add_argument("--timeout-ms", type=float, default=300.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--client-cores", type=int, default=1)
    args = p.parse_args()
    body = bench_serving.make_jpegs(1)[0]
    server_cores, client_cores = bench_serving.split_cores(args.client_cores)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.rate:g} new clients/s "
        f"for {args.seconds:g} s, each giving up after {args.timeout_ms:g} ms; server budget 1,000 ms\n"
    )
    print("| run | clients say their timeout | answered in time /s | images computed /s | statuses |")
    print("|---|---|---:|---:|---|")
    for i in range(args.pairs):
        for say in (False, True):
            path = f"/predict?timeout_ms={args.timeout_ms:g}" if say else "/predict"
            with bench_serving.Server(
                ["--serve", "--runtime", "onnxruntime"], name="impatient", cpus=server_cores
            ) as srv:
                os.sched_setaffinity(0, client_cores)
                try:
                    before = _computed(srv)
                    got = bench_serving.run_client(
                        _arrivals(srv.port, body, path, args.rate, args.seconds, args.timeout_ms / 1000)
                    )
                    time.sleep(1.0)  # the last ones settle
                    computed = _computed(srv) - before
                finally:
                    os.sched_setaffinity(0, server_cores | client_cores)
            statuses = ", ".join(f"{k} {v}" for k, v in sorted(got.items()))
            print(
                f"| {i + 1} | {'yes' if say else 'no'} | {got['200'] / args.seconds:.1f} | "
                f"{computed / args.seconds:.1f} | {statuses} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
