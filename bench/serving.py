"""Serving benchmark: the model's own ceiling, this server under a concurrency sweep, and the same model
served per request without batching (and optionally under Ray Serve). Writes a markdown table
(docs/benchmarks.md takes it verbatim).

    .venv/bin/python bench/serving.py                 # defaults sized for a 2-core box (~4 minutes)
    .venv/bin/python bench/serving.py --seconds 10 --concurrency 1,4,16,64,128 --ray

The server runs in a subprocess (uvicorn, one worker, loopback) so that the load generator (a raw asyncio
HTTP/1.1 client on loopback, 0.4-0.65 ms of CPU per request, reported per row) and the server do not share
one GIL; on a small machine they still share the cores, which the table notes.
Images are 640x480 JPEGs, decoded and resized by the server as in production. The model has the real
pretrained backbone and untrained heads: the compute is the production model's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


# Photographs bundled with scikit-image (no download), colour, of different content and texture.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def make_jpegs(n: int = 16, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """Real photographs cropped to ``size`` and saved as quality-90 JPEGs (about 60-100 KB at 640x480,
    as camera-roll uploads are), alternately mirrored. Synthetic noise would make every JPEG as costly
    to decode as the worst photo (an earlier version of this bench used noise: 147 KB per image)."""
    import skimage.data
    from PIL import Image, ImageOps

    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    out = []
    for i in range(n):
        img = ImageOps.fit(photos[i % len(photos)], size, Image.Resampling.LANCZOS)
        if (i // len(photos)) % 2:
            img = ImageOps.mirror(img)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build_predictor(name: str = "lightbox", version: str = "bench", runtime: str = "torch"):
    """The bench model on ``runtime``: "torch" (the TorchScript graph on CPU) or "onnxruntime" (its ONNX
    export, as a registered version's verified export serves)."""
    import torch

    from lightbox.dataset import TAG_VOCABULARY
    from training.export import export_onnx
    from training.model import Heads, LightboxModel, ModelConfig
    from training.predictor import Predictor

    torch.manual_seed(0)
    config = ModelConfig(tag_names=TAG_VOCABULARY)
    model = LightboxModel(config, Heads(config)).eval()
    onnx = export_onnx(model) if runtime == "onnxruntime" else None
    return Predictor(model, name, version, onnx=onnx)


# --- 1. the model alone ---------------------------------------------------------------------------


def bench_model_layout(batch_sizes: list[int], seconds: float, streams: int, threads: int) -> dict:
    """Subprocess body: ``streams`` threads each calling Predictor.predict on its own batch, torch set to
    ``threads`` intra-op threads: the in-process images/s of one compute layout per batch size (the
    server's start-up calibration measures the same way, for less time)."""
    import torch

    from lightbox.imaging import preprocess_bytes
    from serving.calibration import measure_batch_rates

    torch.set_num_threads(threads)
    predictor = build_predictor()
    jpegs = make_jpegs()
    t0 = time.perf_counter()
    decoded = [preprocess_bytes(b) for b in jpegs]
    decode_ms = (time.perf_counter() - t0) / len(jpegs) * 1000
    rates = measure_batch_rates(
        predictor.predict,
        batch_sizes,
        streams=streams,
        seconds=seconds,
        batch_for=lambda n: np.stack([decoded[i % len(decoded)] for i in range(n)]),
    )
    rows = [{"streams": streams, "threads": threads, **asdict(r)} for r in rates]
    return {"decode_ms_per_image": decode_ms, "rows": rows, "device": str(predictor.device)}


def model_layouts(cores: int) -> list[tuple[int, int]]:
    """(batches side by side, torch threads each) to try: all cores in one batch, one core per batch, and
    the server's default layout."""
    from lightbox.settings import Settings
    from serving.runtime import compute_layout

    default = compute_layout(Settings(), "cpu", cores)
    layouts = {(1, cores), (cores, 1), (default.concurrent_batches, default.torch_threads or 1)}
    return sorted(layouts)


def bench_model(batch_sizes: list[int], seconds: float, layouts: list[tuple[int, int]] | None = None) -> dict:
    """Each layout in a fresh process (torch's thread pools are sized once per process)."""
    from serving.runtime import usable_cores

    result: dict = {"rows": []}
    for streams, threads in layouts or model_layouts(usable_cores()):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--model-layout",
                f"{streams},{threads}",
                "--batch-sizes",
                ",".join(map(str, batch_sizes)),
                "--seconds",
                str(seconds),
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        part = json.loads(out.stdout.strip().splitlines()[-1])
        result["decode_ms_per_image"] = part["decode_ms_per_image"]
        result["device"] = part["device"]
        for r in part["rows"]:
            print(
                f"  model {r['streams']}x{r['threads']} thr batch={r['batch']:3d}: {r['img_s']:7.1f} img/s"
                f"  {r['batch_ms']:7.1f} ms/batch",
                flush=True,
            )
        result["rows"] += part["rows"]
    return result


# --- 2. the server ----------------------------------------------------------------------------------


def serve_forever(
    port: int,
    max_batch: int | None,
    max_wait_ms: float,
    max_queue: int,
    layout: tuple[int, int] | None = None,
    runtime: str = "torch",
) -> None:
    """Subprocess body: the app on 127.0.0.1:port, started as `lightbox serve` starts it (compute
    layout, batch cap calibrated when ``max_batch`` is None, warm-up); ``layout`` (batches side by side,
    torch threads) overrides the default compute layout."""
    import uvicorn

    from lightbox.settings import Settings
    from serving.app import create_app
    from serving.server import sized_for

    settings = Settings(
        serve_max_batch_size=max_batch,
        serve_max_wait_ms=max_wait_ms,
        serve_max_queue=max_queue,
        serve_reload_interval_s=0,
        serve_max_concurrent_batches=layout[0] if layout else None,
        serve_torch_threads=layout[1] if layout else None,
    )
    from serving.runtime import apply_torch_threads, compute_layout

    apply_torch_threads(compute_layout(settings, "cpu"))  # before an ONNX session takes its threads
    predictor = build_predictor(runtime=runtime)
    settings = sized_for(settings, predictor)
    uvicorn.run(
        create_app(settings, predictor), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


def run_client(coro):
    """Run a load generator's coroutine on uvloop where it is installed (it comes with uvicorn[standard]):
    less client CPU per request, so less of the client in the latencies it measures."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def pinned_to(cpus: set[int] | None):
    """A ``preexec_fn`` that gives a child process only ``cpus`` (None: inherit the caller's mask)."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def split_cores(client_cores: int) -> tuple[set[int], set[int]]:
    """(server cores, load-generator cores) out of this process's mask: the load generator takes the
    last ``client_cores`` (0: everything is shared, as before)."""
    mine = sorted(os.sched_getaffinity(0))
    if client_cores <= 0 or client_cores >= len(mine):
        return set(mine), set(mine)
    return set(mine[:-client_cores]), set(mine[-client_cores:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self,
        args: list[str],
        health_path: str = "/healthz",
        name: str | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        """``cpus``: the cores the server may run on (its affinity mask; it sizes itself from it)."""
        self.port = free_port()
        cmd = [sys.executable, __file__, *args, "--port", str(self.port)]
        log_dir = ROOT / ".lightbox" / "bench"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(log_dir / f"server-{name or args[0].strip('-')}.log", "w")  # noqa: SIM115 (closed in __exit__)
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=pinned_to(cpus)
        )
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

    def gauge(self, name: str) -> float:
        """One unlabelled gauge from the server's /metrics."""
        import httpx

        for line in httpx.get(self.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

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
    client_cpu_ms_per_request: float


class _Connection:
    """One keep-alive HTTP/1.1 connection that POSTs a body and reads the answer: the least client work
    per request, so the load generator takes as little as it can of the cores it shares with the server
    (the table reports what it cost)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.retry_after: str | None = None  # of the last answer

    async def connect(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes, content_type: str) -> int:
        """POST once; a kept-alive connection the server has closed meanwhile (uvicorn closes one idle
        for 5 s: a client waiting out a long Retry-After) is opened again and the request sent once
        more, as HTTP clients do."""
        reused = self.writer is not None
        try:
            return await self._post(path, body, content_type)
        except (ConnectionError, EOFError):
            if not reused:
                raise
            await self.close()
            return await self._post(path, body, content_type)

    async def _post(self, path: str, body: bytes, content_type: str) -> int:
        await self.connect()
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.writelines([head, body])
        await self.writer.drain()
        header = await self.reader.readuntil(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        self.retry_after = fields.get("retry-after")
        if fields.get("transfer-encoding", "").lower() == "chunked":
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await self.reader.readexactly(size + 2)
            await self.reader.readuntil(b"\r\n")
        else:
            await self.reader.readexactly(int(fields.get("content-length", "0")))
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


_TRANSPORT_ERRORS = (OSError, EOFError, asyncio.LimitOverrunError, TimeoutError, ValueError)


async def _load(
    url: str, jpegs: list[bytes], concurrency: int, seconds: float, max_requests: int
) -> LoadResult:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    assert parts.hostname in ("127.0.0.1", "localhost"), "the load generator talks to loopback only"
    latencies: list[float] = []
    statuses: list[int] = []
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        conn = _Connection(parts.hostname or "127.0.0.1", parts.port or 80)
        k = i
        try:
            while time.perf_counter() < deadline and len(statuses) < max_requests:
                body = jpegs[k % len(jpegs)]
                k += concurrency
                t = time.perf_counter()
                try:
                    status = await asyncio.wait_for(conn.post(parts.path, body, "image/jpeg"), 120)
                except _TRANSPORT_ERRORS:
                    status = -1
                    await conn.close()
                if status == 200:
                    latencies.append(time.perf_counter() - t)
                statuses.append(status)
        finally:
            await conn.close()

    cpu0, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
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
        client_cpu_ms_per_request=cpu / max(1, len(statuses)) * 1000,
    )


def sweep(
    url: str, jpegs: list[bytes], levels: list[int], seconds: float, max_requests: int, label: str
) -> list[dict]:
    rows = []
    run_client(_load(url, jpegs, 2, 1.0, 20))  # warm connections and the decode pool
    for c in levels:
        r = run_client(_load(url, jpegs, c, seconds, max_requests))
        rows.append(asdict(r))
        print(
            f"  {label} c={c:4d}: {r.img_s:7.1f} img/s  p50 {r.p50_ms:7.1f} ms  p99 {r.p99_ms:7.1f} ms"
            f"  ok {r.ok} 429 {r.rejected} err {r.errors}",
            flush=True,
        )
    return rows


# --- 3. Ray Serve with @serve.batch (optional) --------------------------------------------------------


def ray_serve_forever(port: int, max_batch: int, max_wait_ms: float) -> None:
    """Subprocess body: the same model behind Ray Serve's own batcher on 127.0.0.1:port, given the same
    compute layout as ours: one replica per concurrent batch, each with our torch threads per batch."""
    from lightbox.settings import Settings
    from serving.runtime import compute_layout

    layout = compute_layout(Settings(), "cpu")
    threads = layout.torch_threads or 1
    import ray
    from ray import serve
    from starlette.requests import Request

    from lightbox.imaging import preprocess_bytes

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    # Access logs off: one line per request would cost Ray what ours does not pay (access_log=False).
    @serve.deployment(
        num_replicas=layout.concurrent_batches,
        ray_actor_options={"num_cpus": threads},
        max_ongoing_requests=256,
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )
    class Lightbox:
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(threads)
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


PER_REQUEST = "per-request, no batching (batch 1, same layout)"
PER_REQUEST_SERIAL = "per-request, one at a time (batch 1, torch on every core)"


def markdown(results: dict) -> str:
    m = results["model"]
    best = max(m["rows"], key=lambda r: r["img_s"])
    probes = results.get("ceiling_probes", [best["img_s"]])
    ceilings = results.get("ceilings", {})
    lines = [
        f"Machine: {results['machine']}. Device: {m['device']}. Images: 640x480 JPEG. "
        f"{results['seconds']:.0f} s per point (or {results['max_requests']} requests).",
        "",
        "**Model alone** (in-process `Predictor.predict` on preprocessed uint8 batches, no HTTP; *batches"
        " side by side x torch threads each*; the best row is the ceiling):",
        "",
        "| layout | batch | img/s | ms/batch |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['streams']} x {r['threads']} thr | {r['batch']} | {r['img_s']:.1f} | {r['batch_ms']:.1f} |"
        for r in m["rows"]
    ]
    lines += [
        "",
        f"Ceiling: {best['streams']} x {best['threads']} thr, batch {best['batch']}; measured before the"
        f" servers and again after each one: {', '.join(f'{p:.1f}' for p in probes)} img/s (each server"
        " is compared with the mean of the two probes around it)."
        f" Decode + resize of one 640x480 JPEG (one thread): {m['decode_ms_per_image']:.1f} ms.",
        "",
        "**Over HTTP** (`POST /predict`, raw JPEG body; the load generator is one asyncio process with"
        " keep-alive connections, on the same cores):",
        "",
        "| server | concurrency | img/s | p50 ms | p99 ms | 429 | errors | vs. ceiling | client CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, rows in results["servers"].items():
        ceiling = ceilings.get(label, best["img_s"])
        for r in rows:
            lines.append(
                f"| {label} | {r['concurrency']} | {r['img_s']:.1f} | {r['p50_ms']:.0f} | "
                f"{r['p99_ms']:.0f} | {r['rejected']} | {r['errors']} | {r['img_s'] / ceiling:.0%} | "
                f"{r['client_cpu_ms_per_request']:.2f} |"
            )
    peaks = {label: max(r["img_s"] for r in rows) for label, rows in results["servers"].items()}
    ours = next(iter(peaks))
    lines += ["", "Peak throughput: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in peaks.items()) + "."]
    ratios = [f"**{ours} / ceiling = {peaks[ours] / ceilings.get(ours, best['img_s']):.2f}**"]
    ratios += [f"**/ {k} = {peaks[ours] / v:.2f}x**" for k, v in peaks.items() if k != ours and v > 0]
    lines += ["", "Ratios at the peaks: " + "; ".join(ratios) + "."]
    # The same comparison at each concurrency both ran: throughput ratio, and whose p99 is lower.
    ours_rows = {r["concurrency"]: r for r in results["servers"][ours]}
    others = [k for k in results["servers"] if k != ours]
    lines += ["", "At equal concurrency (ours / theirs in img/s; p99 ms ours vs theirs):", ""]
    lines += ["| concurrency | " + " | ".join(others) + " |", "|---:|" + "---:|" * len(others)]
    for c, mine in ours_rows.items():
        cells = []
        for k in others:
            theirs = next((r for r in results["servers"][k] if r["concurrency"] == c), None)
            cells.append(
                f"{mine['img_s'] / theirs['img_s']:.2f}x; {mine['p99_ms']:.0f} vs {theirs['p99_ms']:.0f}"
                if theirs and theirs["img_s"]
                else "-"
            )
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ray-serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--model-layout", help=argparse.SUPPRESS)
    p.add_argument("--serve-layout", help=argparse.SUPPRESS)
    p.add_argument("--runtime", default="torch", help=argparse.SUPPRESS)
    p.add_argument("--max-batch", type=int, default=None, help="default: calibrated, as `lightbox serve`")
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-queue", type=int, default=512)
    p.add_argument("--seconds", type=float, default=6.0, help="per sweep point")
    p.add_argument("--max-requests", type=int, default=1500, help="per sweep point")
    p.add_argument("--concurrency", default="1,4,16,64,128")
    p.add_argument("--baseline-concurrency", help="default: --concurrency")
    p.add_argument("--batch-sizes", help="model alone; default: the calibration's sizes for the device")
    p.add_argument("--ray", action="store_true", help="also Ray Serve with @serve.batch (needs ray[serve])")
    p.add_argument("--out", type=Path, default=ROOT / ".lightbox" / "bench" / "serving.json")
    args = p.parse_args()

    if args.batch_sizes:
        sizes = [int(x) for x in args.batch_sizes.split(",")]
    else:
        import torch

        from serving.calibration import BATCH_CANDIDATES

        sizes = list(BATCH_CANDIDATES["cuda" if torch.cuda.is_available() else "cpu"])
    if args.model_layout:
        streams, threads = (int(x) for x in args.model_layout.split(","))
        print(json.dumps(bench_model_layout(sizes, args.seconds, streams, threads)))
        return
    if args.serve:
        layout = tuple(int(x) for x in args.serve_layout.split(",")) if args.serve_layout else None
        serve_forever(args.port, args.max_batch, args.max_wait_ms, args.max_queue, layout, args.runtime)  # type: ignore[arg-type]
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
    results["model"] = bench_model(sizes, min(args.seconds, 4.0))
    best = max(results["model"]["rows"], key=lambda r: r["img_s"])
    # A shared machine drifts over minutes: the ceiling (its layout and batch only) is measured again
    # right before the first server and after each one, and each server is compared with the mean of
    # the probes on either side. Not the best model-alone row itself: the best of many noisy rows is
    # biased high.
    probes: list[float] = []
    results["ceilings"] = {}

    def probe_ceiling(label: str | None = None) -> None:
        again = bench_model([best["batch"]], min(args.seconds, 4.0), [(best["streams"], best["threads"])])
        probes.append(again["rows"][0]["img_s"])
        if label is not None:
            results["ceilings"][label] = (probes[-2] + probes[-1]) / 2

    print("the ceiling's layout and batch, right before the servers:", flush=True)
    probe_ceiling()

    common = ["--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(args.max_queue)]
    print("lightbox server (dynamic batching):", flush=True)
    cap = ["--max-batch", str(args.max_batch)] if args.max_batch else []
    with Server(["--serve", *cap, *common]) as srv:
        # The cap the server runs with: the one given, else what its start-up calibration chose.
        args.max_batch = int(srv.gauge("lightbox_batch_max_size"))
        how = "calibrated " if not cap else ""
        label = f"lightbox ({how}batch<={args.max_batch}, wait {args.max_wait_ms:g} ms, default layout)"
        print(f"  {label}", flush=True)
        results["max_batch"] = args.max_batch
        results["servers"][label] = sweep(
            srv.url + "/predict", jpegs, levels, args.seconds, args.max_requests, "batched"
        )
    probe_ceiling(label)
    print("same server, per request (max batch 1):", flush=True)
    baseline = [int(x) for x in (args.baseline_concurrency or args.concurrency).split(",")]
    with Server(["--serve", "--max-batch", "1", *common], name="per-request") as srv:
        results["servers"][PER_REQUEST] = sweep(
            srv.url + "/predict", jpegs, baseline, args.seconds, args.max_requests, "per-request"
        )
    probe_ceiling(PER_REQUEST)
    # What a server without a batcher does by default: one forward pass at a time, torch on every core.
    from serving.runtime import usable_cores

    print("same server, per request, one at a time:", flush=True)
    serial = ["--serve-layout", f"1,{usable_cores()}"]
    with Server(["--serve", "--max-batch", "1", *serial, *common], name="serial") as srv:
        results["servers"][PER_REQUEST_SERIAL] = sweep(
            srv.url + "/predict", jpegs, baseline, args.seconds, args.max_requests, "serial"
        )
    probe_ceiling(PER_REQUEST_SERIAL)
    if args.ray:
        print("Ray Serve (@serve.batch):", flush=True)
        with Server(
            ["--ray-serve", "--max-batch", str(args.max_batch), *common], health_path="/-/healthz"
        ) as srv:
            label = f"Ray Serve @serve.batch (batch<={args.max_batch})"
            results["servers"][label] = sweep(
                srv.url + "/predict", jpegs, levels, args.seconds, args.max_requests, "ray"
            )
        probe_ceiling(label)
    results["ceiling_probes"] = probes

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("\n" + markdown(results))


if __name__ == "__main__":
    main()
