"""Runtime and overload benchmark (issue 11): the model alone on each runtime, the server against the best
of them, and an overload sweep against the latency budget. Writes a markdown table for docs/benchmarks.md.

    .venv/bin/python bench/runtimes.py                       # ~9 minutes on 2 cores
    .venv/bin/python bench/runtimes.py --overload 64,256,1024 --budget-ms 1000

1. **Model alone, one process per core**: TorchScript (the frozen graph torch serves), ONNX Runtime fp32
   (the exported graph) and ONNX Runtime int8 (training.quantize: what `lightbox quantize` registers),
   each process single-threaded at batch 1 and 2, all started together. The best is
   the ceiling. The int8 row also gives its largest output difference from fp32 on real photos.
2. **The server at saturation** on its default runtime for the model (ONNX Runtime on CPU), started as
   `lightbox serve` starts it, against that ceiling; then ``--pairs`` rounds alternating the runtime it
   serves alone and the server at its saturating concurrency (alone, server, alone, server, ... alone),
   each server point over the mean of the two alone points around it.
3. **Overload**: many keep-alive connections (up to 1,024) against ``LIGHTBOX_SERVE_MAX_LATENCY_MS``:
   goodput (200s per second) against a saturated point measured right before and right after that level,
   the p99 of admitted requests against the budget, and the server's CPU per rejection. A refused
   client waits what ``Retry-After`` says before its next request on that connection.

The load generator runs on its own core(s) (``--client-cores``, default 1 of this process's cores), the
server and the model-alone processes on the rest: the server is compared with the model on the cores it
has, and neither the client's work nor its scheduling delay lands in the server's numbers. Every ratio
is between points measured next to each other (this VM's speed drifts by 15% within minutes, so a
reference measured minutes before is off by as much as the gaps it judges). ``--client-cores 0``
shares every core, as earlier runs did. Every number is from one run, side by side.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# bench/ as a namespace package: `bench.serving` (a bare `serving` would be the product's package).
import bench.serving as bench_serving  # noqa: E402

RUNTIMES = ("torchscript", "onnxruntime", "onnxruntime-int8")


def build_model():
    import torch

    from lightbox.dataset import TAG_VOCABULARY
    from training.model import Heads, LightboxModel, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(tag_names=TAG_VOCABULARY)
    return LightboxModel(config, Heads(config)).eval()


def photos_batch(n: int = 16) -> np.ndarray:
    from lightbox.imaging import preprocess_bytes

    return np.stack([preprocess_bytes(b) for b in bench_serving.make_jpegs(n)])


def forward_for(runtime: str, model, artifacts: Path):
    """A batch function of ``runtime``, single-threaded."""
    import torch

    torch.set_num_threads(1)
    if runtime == "torchscript":
        from training.predictor import Predictor

        p = Predictor(model, "bench", "1", "cpu")
        assert p.runtime == "torchscript"
        return p.predict
    from training.export import OnnxModel

    name = "model.onnx" if runtime == "onnxruntime" else "model-int8.onnx"
    return OnnxModel((artifacts / name).read_bytes(), threads=1)


def worker(runtime: str, batch: int, seconds: float, start_at: float, artifacts: Path) -> None:
    """Subprocess body: one single-thread process of ``runtime`` at ``batch`` from ``start_at``."""
    model = build_model()
    fn = forward_for(runtime, model, artifacts)
    x = photos_batch(batch)
    for _ in range(3):
        fn(x)
    while time.time() < start_at:
        time.sleep(0.01)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(x)
        n += batch
    print(json.dumps({"img_s": n / (time.perf_counter() - t0)}))


def side_by_side(runtime: str, batch: int, seconds: float, cpus: set[int], artifacts: Path) -> float:
    """Images/s of one single-thread process per core of ``cpus``, running together (the sum)."""
    start_at = time.time() + 20  # every process loaded and warm before any starts timing
    cmd = [sys.executable, __file__, "--worker", runtime, "--batch", str(batch), "--seconds", str(seconds)]
    procs = [
        subprocess.Popen(
            [*cmd, "--start-at", str(start_at), "--artifacts", str(artifacts)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=bench_serving.pinned_to(cpus),
        )
        for _ in cpus
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    return sum(json.loads(o.strip().splitlines()[-1])["img_s"] for o in outs)


def prepare_artifacts(out: Path) -> dict:
    """The fp32 export and its int8 quantization, and how far int8's answers are from fp32's."""
    from training.export import OnnxModel, export_onnx
    from training.quantize import quantize_int8

    out.mkdir(parents=True, exist_ok=True)
    model = build_model()
    fp32 = export_onnx(model)
    (out / "model.onnx").write_bytes(fp32)
    calibration = photos_batch(32)
    int8 = quantize_int8(fp32, calibration)  # what `lightbox quantize` registers
    (out / "model-int8.onnx").write_bytes(int8)
    test = photos_batch(14)[:, :, :, ::-1].copy()  # mirrored: not the calibration images
    a, b = OnnxModel(fp32)(test), OnnxModel(int8)(test)
    from scipy.stats import spearmanr

    return {
        "int8_max_abs_diff": float(np.abs(a - b).max()),
        "int8_score_rank_corr": float(spearmanr(a[:, 0], b[:, 0]).statistic),
        "fp32_mb": len(fp32) / 1e6,
        "int8_mb": len(int8) / 1e6,
    }


@dataclass
class Overload:
    connections: int
    pooled: bool  # the connections were open before the clock started (no connection storm)
    requests: int
    ok: int
    rejected: int
    errors: int
    goodput: float
    p50_ms: float
    p99_ms: float
    steady_p99_ms: float  # without each connection's first request (its connect, in the opening storm)
    opening_ok: int
    opening_max_ms: float
    server_cpu_s: float
    client_cpu_ms_per_request: float


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _overload(
    url: str, jpegs: list[bytes], connections: int, seconds: float, preconnect: bool = False
) -> dict:
    """``connections`` keep-alive clients for ``seconds``; a 429 makes its client wait Retry-After.

    ``preconnect``: every connection is open before the clock starts, as behind a proxy or load
    balancer that keeps a pool of connections to the server; else they all open at the start (a
    connection storm: the connects wait in the kernel's accept queue, where the app cannot see them)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.hostname in ("127.0.0.1", "localhost"), "the load generator talks to loopback only"
    latencies: list[float] = []
    opening: list[float] = []  # each connection's first answered request: it includes the connect
    statuses: list[int] = []
    conns = [
        bench_serving._Connection(parts.hostname or "127.0.0.1", parts.port or 80) for _ in range(connections)
    ]
    if preconnect:
        await asyncio.gather(*(c.connect() for c in conns))
        await asyncio.sleep(0.5)  # the server has accepted them all
    deadline = time.perf_counter() + seconds

    async def client(i: int) -> None:
        conn = conns[i]
        k = i
        first = True
        try:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    status = await asyncio.wait_for(
                        conn.post(parts.path, jpegs[k % len(jpegs)], "image/jpeg"), 60
                    )
                except bench_serving._TRANSPORT_ERRORS:
                    status = -1
                    await conn.close()
                k += connections
                statuses.append(status)
                if status == 200:
                    (opening if first and not preconnect else latencies).append(time.perf_counter() - t)
                first = False
                if status == 429:  # as a well-behaved client does: wait what Retry-After says
                    retry = float(conn.retry_after or 1)
                    await asyncio.sleep(max(0.0, min(retry, deadline - time.perf_counter())))
        finally:
            await conn.close()

    cpu0, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(connections)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    steady = sorted(latencies) or [float("nan")]
    lat = sorted(latencies + opening) or [float("nan")]
    return {
        "requests": len(statuses),
        "ok": statuses.count(200),
        "rejected": statuses.count(429),
        "errors": len(statuses) - statuses.count(200) - statuses.count(429),
        "goodput": statuses.count(200) / elapsed,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000,
        "steady_p99_ms": steady[min(len(steady) - 1, int(0.99 * len(steady)))] * 1000,
        "opening_ok": len(opening),
        "opening_max_ms": max(opening, default=float("nan")) * 1000,
        "client_cpu_ms_per_request": cpu / max(1, len(statuses)) * 1000,
    }


def overload_sweep(
    url: str,
    pid: int,
    levels: list[int],
    seconds: float,
    pooled: bool = False,
    saturated: Callable[[], float] | None = None,
) -> tuple[list[Overload], list[float]]:
    """Each level with every connection opening at the start; with ``pooled``, the largest level again
    on connections opened beforehand (a request storm without a connection storm). With ``saturated``
    (a saturated point's images/s), one before each level and one after the last: each level's goodput
    is compared with its two neighbours, not with a point measured minutes before (this VM drifts)."""
    jpegs = bench_serving.make_jpegs()
    bench_serving.run_client(_overload(url, jpegs, 2, 1.0))  # warm connections and the decode pool
    rows: list[Overload] = []
    around: list[float] = []
    runs = [(c, False) for c in levels] + ([(max(levels), True)] if pooled and levels else [])
    for c, pre in runs:
        if saturated is not None:
            around.append(saturated())
            print(f"  saturated: {around[-1]:6.1f} img/s", flush=True)
        cpu0 = _cpu_seconds(pid)
        r = bench_serving.run_client(_overload(url, jpegs, c, seconds, preconnect=pre))
        row = Overload(connections=c, pooled=pre, server_cpu_s=_cpu_seconds(pid) - cpu0, **r)
        rows.append(row)
        print(
            f"  c={c:5d}{' pooled' if pre else ''}: goodput {row.goodput:6.1f} img/s"
            f"  p50 {row.p50_ms:6.0f} ms"
            f"  p99 {row.p99_ms:6.0f} ms (steady {row.steady_p99_ms:6.0f})"
            f"  ok {row.ok} 429 {row.rejected} err {row.errors}"
            f"  server CPU {row.server_cpu_s:.1f} s",
            flush=True,
        )
    if saturated is not None and runs:
        around.append(saturated())
        print(f"  saturated: {around[-1]:6.1f} img/s", flush=True)
    return rows, around


def alternate(reference: Callable[[], float], subject: Callable[[], float], rounds: int) -> dict:
    """``reference``, then ``rounds`` times ``subject`` and ``reference`` again: each subject point
    between two reference points, so that a drift of the machine's speed over minutes falls on both
    sides of every ratio."""
    refs = [reference()]
    print(f"  alone:  {refs[-1]:6.1f} img/s", flush=True)
    subjects = []
    for _ in range(rounds):
        subjects.append(subject())
        print(f"  server: {subjects[-1]:6.1f} img/s", flush=True)
        refs.append(reference())
        print(f"  alone:  {refs[-1]:6.1f} img/s", flush=True)
    return {"reference": refs, "subject": subjects, "ratios": between(refs, subjects)}


def between(around: list[float], values: list[float]) -> list[float]:
    """Each of ``values`` over the mean of the two points around it (``around`` has one more)."""
    return [v / ((a + b) / 2) for v, a, b in zip(values, around, around[1:], strict=False)]


def markdown(r: dict) -> str:
    ceiling = max(r["model"].values())
    best = max(r["model"], key=lambda k: r["model"][k])
    q = r["int8"]
    lines = [
        f"Machine: {r['machine']}. Server and model alone on {r['processes']} core(s), the load generator on"
        f" {r['client_cores']} other core(s); {r['processes']} single-thread processes side by side, real"
        f" 640x480 photos; {r['seconds']:.0f} s per point.",
        "",
        "| runtime | batch | img/s (all processes) | vs. TorchScript |",
        "|---|---:|---:|---:|",
    ]
    ts = max(v for k, v in r["model"].items() if k.startswith("torchscript"))
    for key, v in r["model"].items():
        runtime, batch = key.rsplit("@", 1)
        lines.append(f"| {runtime} | {batch} | {v:.1f} | {v / ts:.2f}x |")
    fp32 = max(v for k, v in r["model"].items() if k.startswith("onnxruntime@"))
    int8 = max(v for k, v in r["model"].items() if k.startswith("onnxruntime-int8@"))
    lines += [
        "",
        f"Ceiling: {best} at {ceiling:.1f} img/s. int8 / fp32 (ONNX Runtime): **{int8 / fp32:.2f}x**; int8's"
        f" largest output difference from fp32 on real photos {q['int8_max_abs_diff']:.3f}, score rank"
        f" correlation {q['int8_score_rank_corr']:.3f}; files {q['fp32_mb']:.1f} MB fp32,"
        f" {q['int8_mb']:.1f} MB int8.",
        "",
        "**The server at saturation** (`POST /predict`, raw JPEG body, default runtime):",
        "",
        "| server | concurrency | img/s | p50 ms | p99 ms | 429 | vs. ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["server"]:
        lines.append(
            f"| {r['server_label']} | {row['concurrency']} | {row['img_s']:.1f} | {row['p50_ms']:.0f} | "
            f"{row['p99_ms']:.0f} | {row['rejected']} | {row['img_s'] / ceiling:.0%} |"
        )
    saturated = max(row["img_s"] for row in r["server"])
    key = r["served_key"]
    paired = r["paired"]
    ratios = paired["ratios"]
    lines += [
        "",
        f"**Server / ceiling at the peak: {saturated / ceiling:.2f}.** Against the runtime it serves ({key}),"
        f" alternating on the same core(s): alone {' / '.join(f'{v:.1f}' for v in paired['reference'])}"
        f" img/s, the server at {r['saturating_concurrency']} connections between them"
        f" {' / '.join(f'{v:.1f}' for v in paired['subject'])}: each over the mean of its neighbours"
        f" {' / '.join(f'{v:.2f}' for v in ratios)}, **median {statistics.median(ratios):.2f}**.",
        "",
        f"**Overload** (budget {r['budget_ms']:.0f} ms; a refused client waits what Retry-After says; a"
        f" saturated point at {r['saturating_concurrency']} connections before each level and after the"
        f" last: {' / '.join(f'{v:.1f}' for v in r['overload_saturated'])} img/s, each level against the"
        " mean of its two):",
        "",
        "| connections | goodput img/s | vs. saturated around it | admitted p50 ms | admitted p99 ms"
        " | p99 after each connection's first | first requests answered (slowest ms) | 200 | 429 | errors"
        " | server CPU ms / request |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    shares = between(r["overload_saturated"], [o["goodput"] for o in r["overload"]])
    for o, share in zip(r["overload"], shares, strict=True):
        lines.append(
            f"| {o['connections']}{' (pooled)' if o.get('pooled') else ''} | {o['goodput']:.1f} |"
            f" {share:.2f} |"
            f" {o['p50_ms']:.0f} | {o['p99_ms']:.0f} | {o['steady_p99_ms']:.0f} |"
            f" {o['opening_ok']} ({o['opening_max_ms']:.0f}) | {o['ok']} | {o['rejected']} | {o['errors']} |"
            f" {o['server_cpu_s'] * 1000 / max(1, o['requests']):.2f} |"
        )
    if r.get("cpu_per_rejection_ms") is not None:
        lines += ["", f"Server CPU per rejection (estimated): {r['cpu_per_rejection_ms']:.2f} ms."]
    return "\n".join(lines) + "\n"


def cpu_per_rejection(rows: list[Overload], saturated: Overload | None) -> float | None:
    """(CPU of a point - its 200s at the saturated point's CPU per 200) / its rejections, for the point
    with the most rejections."""
    if saturated is None or saturated.ok == 0:
        return None
    per_ok = saturated.server_cpu_s / saturated.ok
    worst = max(rows, key=lambda o: o.rejected)
    if worst.rejected == 0:
        return None
    return max(0.0, worst.server_cpu_s - worst.ok * per_ok) / worst.rejected * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--artifacts", type=Path, default=ROOT / ".lightbox" / "bench" / "runtimes")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--batches", default="1,2")
    p.add_argument("--concurrency", default="4,8,16")  # below the budget: saturated, nothing refused
    p.add_argument("--overload", default="64,256,1024")
    p.add_argument("--budget-ms", type=float, default=1000.0)
    p.add_argument("--pooled", action="store_true", help="also the largest level on connections opened first")
    p.add_argument("--pairs", type=int, default=3, help="rounds of server vs. served runtime, alternating")
    p.add_argument("--client-cores", type=int, default=1, help="load generator cores (0: shared)")
    p.add_argument("--out", type=Path, default=ROOT / ".lightbox" / "bench" / "runtimes.json")
    args = p.parse_args()
    if args.pairs < 1:
        p.error("--pairs must be at least 1: each server point needs the runtime alone on both sides")
    if args.worker:
        worker(args.worker, args.batch, args.seconds, args.start_at, args.artifacts)
        return

    server_cpus, client_cpus = bench_serving.split_cores(args.client_cores)
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        "processes": len(server_cpus),
        "client_cores": len(client_cpus) if client_cpus != server_cpus else 0,
        "seconds": args.seconds,
        "budget_ms": args.budget_ms,
        "model": {},
    }
    print("exporting and quantizing:", flush=True)
    results["int8"] = prepare_artifacts(args.artifacts)
    print(f"  {results['int8']}", flush=True)
    print("model alone, one process per core:", flush=True)
    for runtime in RUNTIMES:
        for batch in (int(b) for b in args.batches.split(",")):
            v = side_by_side(runtime, batch, args.seconds, server_cpus, args.artifacts)
            results["model"][f"{runtime}@{batch}"] = v
            print(f"  {runtime:18s} batch {batch}: {v:7.1f} img/s", flush=True)

    # The runtime the server serves (the verified fp32 export) at its best batch alone: the reference the
    # server is held to, measured again between the server's saturated points (this VM drifts).
    served = max((k for k in results["model"] if k.startswith("onnxruntime@")), key=results["model"].get)
    runtime, batch = served.rsplit("@", 1)
    results["served_key"] = served
    env_budget = {"LIGHTBOX_SERVE_MAX_LATENCY_MS": str(int(args.budget_ms))}
    os.environ.update(env_budget)
    print("the server (default runtime, calibrated batch cap):", flush=True)
    with bench_serving.Server(
        ["--serve", "--runtime", "onnxruntime", "--max-queue", "4096"], name="runtime", cpus=server_cpus
    ) as srv:
        os.sched_setaffinity(0, client_cpus)  # the load generator, from here on
        label = "lightbox (onnxruntime)"
        results["server_label"] = label
        levels = [int(x) for x in args.concurrency.split(",")]
        results["server"] = bench_serving.sweep(
            srv.url + "/predict", bench_serving.make_jpegs(), levels, args.seconds, 5000, "server"
        )
        peak = max(results["server"], key=lambda row: row["img_s"])["concurrency"]
        results["saturating_concurrency"] = peak

        jpegs = bench_serving.make_jpegs()

        def saturated() -> float:
            r = bench_serving.run_client(
                bench_serving._load(srv.url + "/predict", jpegs, peak, args.seconds, 5000)
            )
            return r.img_s

        print(f"the server against the runtime it serves, alternating ({args.pairs} rounds):", flush=True)
        results["paired"] = alternate(
            lambda: side_by_side(runtime, int(batch), args.seconds, server_cpus, args.artifacts),
            saturated,
            args.pairs,
        )
        print("overload, a saturated point before and after each level:", flush=True)
        rows, results["overload_saturated"] = overload_sweep(
            srv.url + "/predict",
            srv.proc.pid,
            [int(x) for x in args.overload.split(",")],
            args.seconds,
            args.pooled,
            saturated,
        )
    os.sched_setaffinity(0, server_cpus | client_cpus)
    results["overload"] = [o.__dict__ for o in rows]
    results["cpu_per_rejection_ms"] = cpu_per_rejection(
        rows, rows[0] if rows and rows[0].rejected == 0 else None
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("\n" + markdown(results))


if __name__ == "__main__":
    main()
