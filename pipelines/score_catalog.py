"""Stage: score a whole catalog (a folder, an s3:// prefix, a list of URIs) with one model version, on
Ray Data, into parquet parts or the results table the upload consumer writes.

The pipeline streams: Ray Data reads, hashes, decodes and resizes images (``read_batch``:
lightbox.imaging.preprocess_bytes, the server's own path), the model runs in a pool of actors
(``Scorer``: one GPU each where there are GPUs), and this process writes the rows as they come
(lightbox.results). Only URIs and rows pass through the driver, never the catalog's pixels. Where the
reads run is the layout (``choose_layout``): in CPU tasks on every core feeding GPU actors (or actors
pinned to some nodes), inside the model actors, on their threads, where the model runs on CPU.

- Resumable, exactly once: the model version is pinned at start (an alias that moves mid-job does not
  mix versions), what it already has scored in the output is skipped, parts are atomic or upserted.
- A bad image (missing, unreadable, truncated, a decompression bomb) is a row with its error and never
  fails the job; a storage error is retried, and stops the job only once retries are spent
  (StorageUnavailable): a rerun resumes.
- A rerun retries every image whose row is an error (the file was restored or replaced, or storage
  gave up on it): the retry's row, OK or the new error, supersedes the old one (lightbox.results:
  ``finish``), so there is still one row per image.
- A rerun scores again a photo edited in place (a retouched photo re-exported over its file, an S3
  object overwritten): each row records the source version its URI was listed with (size and mtime, or
  size and ETag: lightbox.catalog.list_with_versions, no byte read), and a URI is skipped only while its
  row's version is the listing's (lightbox.results: ``changed_since``); its new row supersedes the old
  content's, as a retry's does. Rows from before versions were recorded, and the URIs of a list (.txt,
  parquet), have none: skipped by URI, as before.

With ``settings.score_online`` (``lightbox score --online``) the job also publishes each image's score,
tag probabilities and embedding to Feast's online store, keyed by (image id, model name, model version)
(lightbox.adapters.feast_store.write_scores), before the same rows reach the sink: a part killed between
the two is rescored and upserted again, never missing online. A photo edited in place has its new
content's row published; the old content's online row is left (Feast deletes online rows only by
dropping a whole view's table), under the old image id, which a reader asks for only by that content.

The embedding is the model's own extractor output (EMBEDDING_DIM first columns), computed by the torch
extractor in the actor beside ``Predictor.predict``. Why not from the same pass: on CPU the predictor
runs the version's ONNX export (or a frozen graph), whose only output is the heads'; a second ONNX output
would need a new export and the gates to verify it for every version. The torch pass costs a second
backbone pass per image, only when embeddings are asked for, and gives exactly the extractor's numbers.

``run`` does the I/O; the row logic (``read_one``, ``rows_from_batch``, lightbox.results' ``pending``,
``changed_since``, ``Deduper``, ``needs_no_row`` and ``stale_errors``) is plain Python, unit-tested
without Ray.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from lightbox.catalog import (
    CatalogError,
    ImageUnreadable,
    StorageUnavailable,
    list_with_versions,
    read_uri,
    with_retries,
)
from lightbox.feature_schema import EMBEDDING_DIM
from lightbox.imaging import (
    IMAGE_EXTENSIONS,
    MODEL_INPUT_SIZE,
    ImageDecodeError,
    describe_by_extension,
    preprocess_bytes,
)
from lightbox.photos import id_of_digest
from lightbox.progress import progress
from lightbox.results import (
    Deduper,
    Done,
    ScoreRow,
    changed_since,
    needs_no_row,
    open_sink,
    pending,
    still_done_ids,
    tag_probs_json,
)
from lightbox.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

    from training.predictor import Predictor

Embed = Callable[[np.ndarray], np.ndarray]  # uint8 pixels [N,3,224,224] -> float32 [N, EMBEDDING_DIM]

log = logging.getLogger(__name__)

OK, ERROR, SKIP = "ok", "error", "skip"
# Storage failed after every retry (StorageUnavailable): returned as a row, not raised in the Ray worker,
# where Ray Data would wrap it (RayTaskError(UserCodeException), its cause lost in pickling) and the CLI
# could not tell it from any other failure. The driver stops the job on it (``unavailable``).
UNAVAILABLE = "unavailable"
READ_BATCH = 16  # images per read task: enough to amortize a task, small enough to spread over cores
ACTORS_START_S = 900  # the longest model actors may take to load, before the job fails
ACTOR_ROWS_CPU = 32  # images per model actor task on CPU (its model batches run inside it)
ACTOR_ROWS_GPU = 256
# Calls at once in a CPU actor that decodes (DecodeThen), at least: one decodes while another runs the
# model. Two gave a steady rate 1.05-1.11x one's, alternating on 2 cores (docs/benchmarks.md).
MIN_ACTOR_CALLS = 2
FLUSH_EVERY_S = 60.0  # a part at least this often: a killed slow job loses at most a minute of work
ERRORS_SHOWN = 20
LEFT_OUT_SHOWN = 5  # kinds of files the summary names that a folder held and the job did not list
# Ray CPUs a model actor and a read task reserve: they bound how many run at once, not their threads
# (an actor's are actor_threads). With read tasks: one actor per core on one thread each, reads at half a
# CPU, measured slower end to end on 2 cores (docs/benchmarks.md): the second model load outweighed it.
ACTOR_CPUS = 1.0
READ_CPUS = 1.0
_PIXELS = (3, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE)


@dataclass(frozen=True)
class Read:
    """One URI after reading: pixels for the model, or why not."""

    uri: str
    status: str  # OK, ERROR, SKIP (this model version has the same content already) or UNAVAILABLE
    image_id: str = ""  # "": nothing was read
    content_hash: str = ""
    error: str = ""
    pixels: np.ndarray | None = None


def read_one(
    uri: str,
    fetch: Callable[[str], bytes],
    *,
    max_pixels: int,
    done_ids: frozenset[str] = frozenset(),
    attempts: int = 4,
) -> Read:
    """Fetch, hash and preprocess one image. Everything wrong with the image itself (missing, unreadable,
    undecodable) is its row's error; storage that failed every one of ``attempts`` tries is an
    UNAVAILABLE read, which stops the job (``unavailable``)."""
    try:
        data = with_retries(lambda: fetch(uri), attempts=attempts)
    except FileNotFoundError as exc:
        return Read(uri, ERROR, error=f"not found: {exc}")
    except ImageUnreadable as exc:
        return Read(uri, ERROR, error=f"unreadable: {exc}")
    except StorageUnavailable as exc:
        return Read(uri, UNAVAILABLE, error=str(exc))
    digest = hashlib.sha256(data).hexdigest()
    image_id = id_of_digest(digest)  # the importer's and the upload consumer's id
    if image_id in done_ids:
        return Read(uri, SKIP, image_id, digest)
    try:
        pixels = preprocess_bytes(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        return Read(uri, ERROR, image_id, digest, error=str(exc))
    return Read(uri, OK, image_id, digest, pixels=pixels)


_done_cache: dict[str, frozenset[str]] = {}


def read_batch(
    batch: dict[str, np.ndarray],
    *,
    endpoint_url: str | None,
    max_pixels: int,
    attempts: int,
    done_ref: list[Any],
    map_: Callable[..., Any] = map,
) -> dict[str, np.ndarray]:
    """The Ray Data read step (a task, or inside a model actor): URIs in, pixels and ids out.
    ``done_ref``: [ObjectRef of the done image ids], wrapped so Ray passes the reference and each worker
    fetches the set once. ``map_``: a thread pool's map reads the batch on several cores (decoding,
    resizing and hashing release the GIL). A ``source_version`` column (bulk scoring's listing) goes on
    as it came, for the rows to record."""
    done_ids = _done_ids(done_ref[0])

    def one(uri: object) -> Read:
        return read_one(
            str(uri),
            lambda u: read_uri(u, endpoint_url),
            max_pixels=max_pixels,
            done_ids=done_ids,
            attempts=attempts,
        )

    reads: list[Read] = list(map_(one, batch["uri"]))
    pixels = np.zeros((len(reads), *_PIXELS), np.uint8)  # zeros where there is nothing to score
    for i, r in enumerate(reads):
        if r.pixels is not None:
            pixels[i] = r.pixels
    # "" rather than None for absent strings: an all-None column would be Arrow's null type, which
    # does not concatenate with the string blocks of other tasks.
    out = {
        "uri": np.array([r.uri for r in reads], object),
        "status": np.array([r.status for r in reads], object),
        "image_id": np.array([r.image_id for r in reads], object),
        "content_hash": np.array([r.content_hash for r in reads], object),
        "error": np.array([r.error for r in reads], object),
        "read_node": np.full(len(reads), _node_id() or "", object),  # where it was decoded
        "pixels": pixels,
    }
    if "source_version" in batch:  # in the order of the URIs: map_ keeps it
        out["source_version"] = np.array([str(v) for v in batch["source_version"]], object)
    return out


def _done_ids(ref: Any) -> frozenset[str]:
    import ray

    key = ref.hex()
    ids = _done_cache.get(key)
    if ids is None:  # a local, not the cache's entry: an actor's concurrent calls may clear it
        ids = ray.get(ref)
        _done_cache.clear()  # one job's set at a time per worker
        _done_cache[key] = ids
    return ids


class Scorer:
    """The Ray Data model step (an actor): loads the pinned version once, then scores batches.

    Calls only Predictor.predict and its identity (name, version, tag_names): the predictor decides
    its own runtime. Without ``batch_size`` the actor measures its device and takes the fastest batch.
    ``threads``: intra-op threads on CPU (``actor_threads``), set before the load so the ONNX Runtime
    session the predictor may build takes the same count.
    """

    def __init__(
        self,
        settings: Settings,
        alias: str,
        version: str,
        batch_size: int | None,
        embed: bool = False,
        threads: int | None = None,
    ) -> None:
        import os

        import torch

        from training.predictor import RegistryLoader

        if threads and not torch.cuda.is_available():  # on CUDA the loader puts the model on the GPU
            torch.set_num_threads(threads)
        self.predictor: Predictor = RegistryLoader(settings, alias).load(version)
        self.embed = extractor_embedding(self.predictor) if embed else None
        self.batch_size = batch_size or self._calibrated()
        self.node = _node_id() or f"pid:{os.getpid()}"

    def _calibrated(self) -> int:
        import torch

        from serving.calibration import calibrate, pick_batch_size

        device = "cuda" if torch.cuda.is_available() else "cpu"  # where the predictor puts itself
        measured = calibrate(self.predictor.predict, device, streams=1)
        chosen = pick_batch_size(measured.rates, good_enough=1.0)  # the best images/s, not the knee
        log.info("bulk scoring batch %d (%s)", chosen, measured.summary())
        return chosen

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = score_batch(batch, self.predictor, self.batch_size, self.embed)
        out["node"] = np.full(len(out["uri"]), self.node, object)  # where it ran: a cluster's test reads it
        return out


class DecodeThen:
    """The read step and the model step in one actor (``Layout.decode_in_actor``): each batch of URIs is
    read and decoded on the actor's ``threads`` (a thread pool: decoding, resizing and hashing release
    the GIL), then goes to ``model``; ``calls`` calls overlap (``Layout.calls``), and a model given
    NODE_CPUS threads runs each call's batches on threads / calls of them: the server's side-by-side
    batches (serving.runtime.cpu_streams), which beat one batch on every core for this network. Why
    decode here, on CPU: the same cores do both, and a node's actor then decodes what it scores, so a CPU
    cluster scales by nodes with no pixels sent between them."""

    def __init__(
        self,
        model: type,
        model_kwargs: dict[str, Any],
        read_kwargs: dict[str, Any],
        threads: int,
        calls: int = 1,
    ):
        from concurrent.futures import ThreadPoolExecutor

        if threads == NODE_CPUS:  # all of this node's cores, for the reads and the model
            threads = _own_node_cpus()
        if model_kwargs.get("threads") == NODE_CPUS:
            from serving.runtime import cpu_streams

            model_kwargs = {**model_kwargs, "threads": cpu_streams(threads, calls).torch_threads}
        self.model = model(**model_kwargs)
        self.read_kwargs = read_kwargs
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 1 else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        read = read_batch(batch, **self.read_kwargs, map_=self.pool.map if self.pool else map)
        return self.model(read)


def _own_node_cpus() -> int:
    """The CPUs Ray gives the node this worker runs on."""
    import os

    import ray

    me = _node_id()
    for node in ray.nodes():
        if node.get("NodeID") == me:
            return max(1, int(node["Resources"].get("CPU", 1)))
    return os.cpu_count() or 1


def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def extractor_embedding(predictor: Predictor) -> Embed:
    """The version's own extractor in torch, fp32, on the predictor's device: the embedding columns."""
    import torch

    extractor = predictor.model.extractor

    def embed(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pixels)).to(predictor.device)
            return extractor(x)[:, :EMBEDDING_DIM].float().cpu().numpy()

    return embed


def score_batch(
    batch: dict[str, np.ndarray], predictor: Predictor, batch_size: int, embed: Embed | None = None
) -> dict[str, np.ndarray]:
    """Scores for the rows read OK, in model batches of ``batch_size``; the pixels do not go on.
    With ``embed``, an ``embedding`` column too (zeros where nothing was scored)."""
    n = len(batch["uri"])
    ok = np.flatnonzero(batch["status"] == OK)
    scores = np.full(n, np.nan, np.float32)
    probs_json = np.full(n, "", object)
    embeddings = np.zeros((n, EMBEDDING_DIM), np.float32) if embed is not None else None
    for start in range(0, len(ok), batch_size):
        rows = ok[start : start + batch_size]
        pixels = np.ascontiguousarray(batch["pixels"][rows])
        s, p = predictor.predict(pixels)
        if len(s) != len(rows) or len(p) != len(rows):
            raise ValueError(f"model returned {len(s)} scores for {len(rows)} images")
        scores[rows] = s
        for i, probs in zip(rows, p, strict=True):
            probs_json[i] = tag_probs_json(predictor.tag_names, probs)
        if embeddings is not None and embed is not None:
            e = embed(pixels)
            if e.shape != (len(rows), EMBEDDING_DIM):
                raise ValueError(f"extractor returned {e.shape} for {len(rows)} images")
            embeddings[rows] = e
    out = {k: v for k, v in batch.items() if k != "pixels"}
    if embeddings is not None:
        out["embedding"] = embeddings
    out["score"] = scores
    out["tag_probs"] = probs_json
    out["model_name"] = np.full(n, predictor.name, object)
    out["model_version"] = np.full(n, predictor.version, object)
    out["has_score"] = np.full(n, predictor.has_score, bool)
    return out


def embeddings_of(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """image id -> embedding for the rows scored in a batch (none when the batch has no embeddings)."""
    if "embedding" not in batch:
        return {}
    ok = (batch["status"] == OK) & (batch["error"] == "")
    return {str(batch["image_id"][i]): batch["embedding"][i] for i in np.flatnonzero(ok)}


def score_frame(rows: list[ScoreRow], embeddings: dict[str, np.ndarray], when: datetime) -> pd.DataFrame:
    """The scores view's rows (lightbox.feature_schema SCORE_FIELDS) for the scored rows among ``rows``."""
    import pandas as pd

    good = [r for r in rows if r.error is None and r.image_id is not None and r.image_id in embeddings]
    return pd.DataFrame(
        {
            "image_id": [r.image_id for r in good],
            "model_version": [r.model_version for r in good],
            "event_timestamp": pd.Series([pd.Timestamp(when)] * len(good), dtype="datetime64[us, UTC]"),
            "score": pd.Series([r.score for r in good], dtype="float32"),
            "tag_probs": [r.tag_probs for r in good],
            "embedding": [embeddings[str(r.image_id)].astype(np.float32) for r in good],
            "model_name": [r.model_name for r in good],
        }
    )


def rows_from_batch(batch: dict[str, np.ndarray]) -> tuple[list[ScoreRow], list[str]]:
    """The rows to write from one scored batch, and the URIs skipped (content already scored)."""
    import json

    rows, skipped = [], []
    versions = batch.get("source_version")  # "": the listing knew none
    for i in range(len(batch["uri"])):
        status = batch["status"][i]
        if status == SKIP:
            skipped.append(str(batch["uri"][i]))
            continue
        error = str(batch["error"][i]) or None
        score = float(batch["score"][i])
        rows.append(
            ScoreRow(
                uri=str(batch["uri"][i]),
                image_id=str(batch["image_id"][i]) or None,
                content_hash=str(batch["content_hash"][i]) or None,
                model_name=str(batch["model_name"][i]),
                model_version=str(batch["model_version"][i]),
                score=None if error or not batch["has_score"][i] or np.isnan(score) else score,
                tag_probs=None if error else json.loads(batch["tag_probs"][i]),
                error=error,
                source_version=(str(versions[i]) or None) if versions is not None else None,
            )
        )
    return rows, skipped


@dataclass
class ScoreResult:
    source: str
    out: str
    model_name: str
    model_version: str
    listed: int = 0  # URIs the source names
    scored: int = 0
    failed: int = 0  # rows with an error
    skipped: int = 0  # this version had them already (or the URI or content came twice)
    retried: int = 0  # listed URIs whose row was an error: read again (counted in scored or failed too)
    # Listed URIs scored OK whose source changed since: read again (counted in scored, failed or skipped).
    changed: int = 0
    online: int = 0  # rows published to the Feast online store (--online)
    nodes: dict[str, int] = field(default_factory=dict)  # Ray node id -> images its actors scored
    read_nodes: dict[str, int] = field(default_factory=dict)  # Ray node id -> images its tasks decoded
    seconds: float = 0.0
    images_per_s: float = 0.0
    # From the first scored batch to the last: the pipeline's rate once Ray has started and the model
    # actors have loaded (fixed costs that a big catalog amortizes and a small one is mostly made of).
    first_results_s: float | None = None  # from the start of the job
    streaming_images_per_s: float | None = None  # None: fewer than two batches came out
    steady_images_per_s: float | None = None  # from a quarter of the results to the last (StreamClock)
    errors: list[tuple[str, str]] = field(default_factory=list)  # the first few (uri, error)
    # Files of a folder or prefix that are not images by name, by extension (catalog.list_with_versions).
    left_out: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.model_name} v{self.model_version}: {self.scored} scored, {self.skipped} skipped, "
            f"{self.failed} failed of {self.listed}{self._retried()}{self._changed()} in {self.seconds:.1f}s "
            f"({self.images_per_s:.1f} images/s{self._streaming()}) -> {self.out}{self._left_out()}"
        )

    def _retried(self) -> str:
        return f", {self.retried} retried (failed before)" if self.retried else ""

    def _changed(self) -> str:
        return f", {self.changed} changed since scored" if self.changed else ""

    def _left_out(self) -> str:
        if not self.left_out:
            return ""
        return f"; not listed, not images by name: {describe_by_extension(self.left_out, LEFT_OUT_SHOWN)}"

    def _streaming(self) -> str:
        if self.streaming_images_per_s is None or self.first_results_s is None:
            return ""
        return f"; {self.streaming_images_per_s:.1f}/s after the first results at {self.first_results_s:.1f}s"


class StreamClock:
    """The rate of a stream of batches from its first to its last: images after the first batch over
    the time between them (the first batch's own images are what the start-up produced). With
    ``total``, also from the batch that brought a quarter of the images to the last
    (``steady_images_per_s``): well past the start-up, where reads that ran ahead while the model loaded
    no longer flatter the rate."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, total: int | None = None) -> None:
        self.clock = clock
        self.first: float | None = None
        self.last: float | None = None
        self.first_images = 0  # the first batch's
        self.total = total
        self.seen = 0
        self.quarter: tuple[float, int] | None = None  # (time, images seen) when a quarter had come

    def batch(self, images: int) -> None:
        now = self.clock()
        if self.first is None:
            self.first, self.first_images = now, images
        self.last = now
        self.seen += images
        if self.quarter is None and self.total and 4 * self.seen >= self.total:
            self.quarter = (now, self.seen)

    def images_per_s(self) -> float | None:
        if self.first is None or self.last is None or self.last <= self.first:
            return None
        return (self.seen - self.first_images) / (self.last - self.first)

    def steady_images_per_s(self) -> float | None:
        if self.quarter is None or self.last is None or self.last <= self.quarter[0]:
            return None
        return (self.seen - self.quarter[1]) / (self.last - self.quarter[0])


def run(
    settings: Settings,
    source: str,
    out: str,
    *,
    alias: str | None = None,
    version: str | None = None,
) -> ScoreResult:
    """Score every image ``source`` names with ``models:/<model_name>@<alias>`` (or ``version``) into
    ``out``: a folder of parquet parts, or ``postgres`` (settings.results_dsn, results_table)."""
    from lightbox.adapters import mlflow_registry
    from training.predictor import RegistryLoader

    alias = alias or settings.champion_alias
    if version is not None:  # named: checked here, in one line, not by every actor failing to load it
        mlflow_registry.require_version(settings, version)
    version = version or RegistryLoader(settings, alias).resolve()  # pinned for the whole job
    mlflow_registry.require_judged(settings, version)  # likewise: the actors would each refuse it
    sink = open_sink(out, dsn=settings.results_dsn, table=settings.results_table)
    result = ScoreResult(source, sink.describe(), settings.model_name, version)
    t0 = time.monotonic()
    try:
        done = sink.done(settings.model_name, version)
        left_out: Counter[str] = Counter()
        listed = list(list_with_versions(source, settings.s3_endpoint_url, left_out))
        result.left_out = dict(left_out)
        if not listed:  # a wrong folder, most likely: say so, not "0 scored of 0"
            others = f"; it holds {describe_by_extension(left_out)}" if left_out else ""
            raise CatalogError(f"no images in {source} (by name: {', '.join(IMAGE_EXTENSIONS)}){others}")
        uris = [item.uri for item in listed]
        versions = {item.uri: item.version for item in listed if item.version is not None}
        changed = changed_since(done, versions)
        todo, result.skipped, result.retried = pending(uris, done, changed)
        result.listed, result.changed = len(uris), len(changed)
        log.info(
            "%d images listed, %d to score with v%s (%d failed before, %d changed since scored)",
            len(uris),
            len(todo),
            version,
            result.retried,
            result.changed,
        )
        if todo:
            stream = StreamClock(total=len(todo))
            job = Job(todo, [versions.get(uri) for uri in todo], done, changed)
            _score(settings, job, alias, version, sink, result, stream)
            result.streaming_images_per_s = stream.images_per_s()
            result.steady_images_per_s = stream.steady_images_per_s()
            if stream.first is not None:
                result.first_results_s = stream.first - t0
    finally:
        sink.close()
    result.seconds = time.monotonic() - t0
    result.images_per_s = (result.scored + result.failed) / result.seconds if result.seconds else 0.0
    log.info("%s", result.summary())
    return result


@dataclass(frozen=True)
class Job:
    """What one run scores: the pending URIs with their listed versions, and what the sink had."""

    todo: list[str]
    versions: list[str | None]  # todo's, in order; None: unknown
    done: Done
    changed: frozenset[str]  # of todo, the URIs scored OK whose source changed since (changed_since)


def _score(
    settings: Settings,
    job: Job,
    alias: str,
    version: str,
    sink: Any,
    result: ScoreResult,
    stream: StreamClock,
) -> None:
    from lightbox.ray_cluster import ray_session

    publish = OnlinePublisher(settings) if settings.score_online else None
    with ray_session(settings):
        dedupe, last_flush = Deduper(), time.monotonic()
        buffer: list[ScoreRow] = []
        embeddings: dict[str, np.ndarray] = {}
        settled: set[str] = set()  # retried or changed URIs that need no row now (needs_no_row)
        done_ids = still_done_ids(job.done, job.changed)

        def flush() -> None:
            if publish is not None:  # online first: see the module docstring
                result.online += publish(buffer, embeddings)
            sink.write(buffer)
            embeddings.clear()

        with progress(total=len(job.todo), desc=f"score v{version}", unit="img") as bar:
            try:
                for batch in _batches(settings, job.todo, job.versions, done_ids, alias, version):
                    rows, skipped = rows_from_batch(batch)
                    rows, repeated = dedupe.new(rows)
                    result.skipped += len(skipped) + len(repeated)
                    settled |= needs_no_row(job.done.failed, skipped, repeated, job.changed)
                    for r in rows:
                        if r.error is None:
                            result.scored += 1
                        else:
                            result.failed += 1
                            if len(result.errors) < ERRORS_SHOWN:
                                result.errors.append((r.uri, r.error))
                    for counts, column in ((result.nodes, "node"), (result.read_nodes, "read_node")):
                        for node in batch[column][batch["status"] == OK]:
                            counts[str(node)] = counts.get(str(node), 0) + 1
                    buffer += rows
                    embeddings.update(embeddings_of(batch))
                    now = time.monotonic()
                    if len(buffer) >= settings.score_part_rows or now - last_flush >= FLUSH_EVERY_S:
                        flush()
                        buffer, last_flush = [], now
                    bar.update(len(batch["uri"]))
                    stream.batch(len(batch["uri"]))
            except StorageUnavailable:
                flush()  # what was scored before storage failed is kept: a rerun goes on from there
                sink.finish(settled)
                raise
            flush()
            # Only now, with every row written: a superseded error row goes after the row superseding it.
            sink.finish(settled)


class OnlinePublisher:
    """Writes each flush's scored rows to Feast (offline part + online), numbered parts per job: the
    bulk job's and the upload consumer's."""

    def __init__(self, settings: Settings) -> None:
        import uuid

        from lightbox.adapters import feast_store

        self.settings = settings
        self.store = feast_store.apply(settings)  # the scores view must be registered before writes
        self.job = uuid.uuid4().hex[:12]
        self.n = 0

    def __call__(self, rows: list[ScoreRow], embeddings: dict[str, np.ndarray]) -> int:
        from lightbox.adapters import feast_store

        frame = score_frame(rows, embeddings, datetime.now(UTC))
        feast_store.write_scores(self.settings, self.store, frame, f"part-{self.job}-{self.n:06d}")
        self.n += 1
        return len(frame)


def _batches(
    settings: Settings,
    todo: list[str],
    versions: list[str | None],
    done_ids: frozenset[str],
    alias: str,
    version: str,
) -> Iterator[dict[str, np.ndarray]]:
    """URIs -> reads -> Scorer actors -> scored batches, streamed."""
    layout = pipeline_layout(settings)
    kwargs = {
        "settings": settings,
        "alias": alias,
        "version": version,
        "batch_size": settings.score_batch_size,
        "embed": settings.score_online,
        "threads": layout.threads,
    }
    yield from image_pipeline(
        settings, todo, Scorer, kwargs, done_ids=done_ids, layout=layout, versions=versions
    )


@dataclass(frozen=True)
class Layout:
    """Where a job's work runs on the Ray cluster."""

    actors: int  # model actors
    use_gpu: bool  # one GPU each
    decode_in_actor: bool  # reads inside the model actors (DecodeThen), not in read tasks
    # Each CPU actor's intra-op threads, and its read threads when it reads; NODE_CPUS: all of its own
    # node's CPUs (one actor per node: nodes of different sizes each use all their cores).
    threads: int
    # Work goes out once every model actor has loaded (one per node, each node has room for it).
    wait_for_actors: bool = False
    calls: int = 1  # calls at once in each actor (DecodeThen: one model stream each)


NODE_CPUS = 0  # Layout.threads: the CPUs of the node the actor runs on


def choose_layout(settings: Settings, gpus: int, node_cpus: list[float]) -> Layout:
    """The layout for a cluster with ``gpus`` GPUs whose nodes that can hold a model actor have
    ``node_cpus`` CPUs each (a node without a whole CPU cannot: a head started with --num-cpus=0).

    Reads go inside the actors where the model runs on CPU (settings.score_decode "auto"), one actor per
    such node on all of that node's cores (DecodeThen says why). They stay in tasks on every core for GPU
    actors (a GPU must not wait on JPEG decode), where actor resources pin the actors to some nodes (the
    other nodes are there to decode), and where LIGHTBOX_SCORE_ACTORS asks for fewer actors than nodes
    (the read tasks keep the other nodes busy).
    """
    nodes = [c for c in node_cpus if c >= ACTOR_CPUS]
    use_gpu = _wants_gpu(settings, gpus)
    if settings.score_decode == "auto":
        in_actor = (
            not use_gpu
            and not settings.score_actor_resources
            and (settings.score_actors is None or settings.score_actors >= len(nodes))
        )
    else:
        in_actor = settings.score_decode == "actor"
    per_node = in_actor and not use_gpu and settings.score_actors is None
    if settings.score_actors:
        actors = settings.score_actors
    elif use_gpu:
        actors = max(gpus, 1)
    else:  # with read tasks on CPU, one actor: the read tasks take the other cores of every node
        actors = max(1, len(nodes)) if in_actor else 1
    threads = settings.score_actor_threads or (NODE_CPUS if per_node else actor_threads(nodes, actors))
    calls = MIN_ACTOR_CALLS if in_actor and not use_gpu else 1
    if threads == NODE_CPUS:
        from serving.runtime import cpu_streams

        # The server's batches side by side for the node's cores (the smallest node's: a pool has one
        # count of calls for all its actors). Explicit threads keep their meaning: each call's.
        calls = max(calls, cpu_streams(int(min(nodes, default=1))).concurrent_batches)
    return Layout(actors, use_gpu, in_actor, threads, per_node and len(nodes) > 1, calls)


def actor_calls(layout: Layout, model_threads: object) -> int:
    """The layout's calls where the model's threads are split among them (NODE_CPUS), at most
    MIN_ACTOR_CALLS where they are not: a model with a thread count of its own (feature extraction keeps
    the driver's, for features equal to an in-process run's) would run that many threads in every call."""
    return layout.calls if model_threads == NODE_CPUS else min(layout.calls, MIN_ACTOR_CALLS)


def pipeline_layout(settings: Settings) -> Layout:
    """choose_layout for the connected Ray cluster."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    return choose_layout(settings, gpus, _actor_node_cpus(settings, _wants_gpu(settings, gpus)))


def _wants_gpu(settings: Settings, gpus: int) -> bool:
    """Model actors take a GPU each: where the cluster has GPUs, unless settings.use_gpu says."""
    return bool(gpus) if settings.use_gpu is None else settings.use_gpu


def actor_threads(node_cpus: list[float], actors: int) -> int:
    """Intra-op threads for each CPU model actor: the CPUs of the smallest node that takes model actors,
    divided among the actors SPREAD places on one node.

    Why not Ray's default: Ray gives an actor as many threads as CPUs it reserves (one), so the model,
    nearly all of the work on CPU (decoding an image costs a fraction of a forward pass, camera JPEGs
    being draft-decoded), would run on one core while the node's other cores wait. With read tasks they
    still run beside the actor's threads; the oversubscription while they do costs less than leaving
    cores idle the rest of the time. LIGHTBOX_SCORE_ACTOR_THREADS overrides.
    """
    if not node_cpus:
        return 1
    per_node = -(-actors // len(node_cpus))
    return max(1, int(min(node_cpus)) // per_node)


def _actor_node_cpus(settings: Settings, use_gpu: bool) -> list[float]:
    """The CPU count of every live node that can hold a model actor (its GPU and custom resources)."""
    import ray

    needs = {**settings.score_actor_resources, **({"GPU": 1.0} if use_gpu else {})}
    return [
        node["Resources"].get("CPU", 0.0)
        for node in ray.nodes()
        if node.get("Alive") and all(node["Resources"].get(k, 0.0) >= v for k, v in needs.items())
    ]


def check_reservations(actors: int, actor_cpus: float, read_cpus: float, cluster_cpus: float) -> None:
    """Refuse a layout whose model actors leave no room for a read task (``read_cpus`` 0: the actors
    read themselves): actors hold their CPUs for the whole job, so the reads would wait forever and the
    job would hang instead of failing."""
    if actors * actor_cpus > cluster_cpus - read_cpus:
        room = f"less than a read task's {read_cpus:g} of" if read_cpus else "more than"
        raise ValueError(
            f"score_actors={actors} at {actor_cpus:g} CPU each would need {room} the Ray cluster's"
            f" {cluster_cpus:g} CPUs to read and decode images: use fewer actors, or more CPUs"
            " (LIGHTBOX_RAY_NUM_CPUS, or more nodes)"
        )


def image_pipeline(
    settings: Settings,
    uris: list[str],
    model: type,
    model_kwargs: dict[str, Any],
    *,
    done_ids: frozenset[str] = frozenset(),
    layout: Layout | None = None,
    versions: list[str | None] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The Ray Data pipeline bulk scoring and feature extraction share: URIs -> reads (fetch, hash,
    decode, resize: ``read_batch``, in tasks or in the actors: ``Layout``) -> a pool of ``model`` actors
    (one GPU each where there are GPUs) -> their output batches, streamed to the caller in no particular
    order. ``model(**model_kwargs)`` is built once per actor and called on numpy batches of read rows
    (``pixels`` and the read columns). ``versions``: each URI's source version, a ``source_version``
    column through to the output ("" where unknown)."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts images; Ray's would draw over it
    layout = layout or pipeline_layout(settings)
    layout = replace(layout, calls=actor_calls(layout, model_kwargs.get("threads")))
    cpus = ray.cluster_resources().get("CPU", 0)
    check_reservations(layout.actors, ACTOR_CPUS, 0.0 if layout.decode_in_actor else READ_CPUS, cpus)
    # The unit of work an actor takes: its model batches run inside it (Scorer.batch_size).
    actor_rows = settings.score_batch_size or (ACTOR_ROWS_GPU if layout.use_gpu else ACTOR_ROWS_CPU)
    # Blocks of READ_BATCH URIs (an actor's rows when it reads), rounded up: a block is a read task and,
    # downstream, an actor's task (24 URIs in one block would leave every core but one idle).
    block = actor_rows if layout.decode_in_actor else READ_BATCH
    blocks = max(1, min(-(-len(uris) // block), 10_000))
    # "" rather than None for an unknown version: see read_batch.
    items = (
        [{"uri": u} for u in uris]
        if versions is None
        else [{"uri": u, "source_version": v or ""} for u, v in zip(uris, versions, strict=True)]
    )
    ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=blocks)
    read_kwargs = {
        "endpoint_url": settings.s3_endpoint_url,
        "max_pixels": settings.max_pixels,
        "attempts": settings.score_read_attempts,
        "done_ref": [ray.put(done_ids)],
    }
    if layout.decode_in_actor:
        fn: type = DecodeThen
        constructor: dict[str, Any] = {
            "model": model,
            "model_kwargs": model_kwargs,
            "read_kwargs": read_kwargs,
            "threads": layout.threads,
            "calls": layout.calls,
        }
    else:
        ds = ds.map_batches(
            read_batch,  # type: ignore[arg-type]  # Ray's stub wants the batch param typed as any format
            batch_size=READ_BATCH,
            batch_format="numpy",
            fn_kwargs=read_kwargs,
            num_cpus=READ_CPUS,
        )
        fn, constructor = model, model_kwargs
    ds = ds.map_batches(
        fn,
        batch_size=actor_rows,
        batch_format="numpy",
        fn_constructor_kwargs=constructor,
        compute=_actor_pool(layout),
        num_cpus=ACTOR_CPUS,
        num_gpus=1 if layout.use_gpu else 0,
        resources=dict(settings.score_actor_resources) or None,
        # Model actors on different nodes where they can be. And remote args unlike the read step's:
        # Ray Data fuses a task map into the actor map after it when their remote args are equal, and
        # fused, every decode would run inside the few model actors (one thread each; a GPU actor would
        # wait on JPEG decode) instead of in read tasks on every core of the cluster.
        scheduling_strategy="SPREAD",
    )
    # One actor per node: work goes out once every one has loaded, else the first one ready queues the
    # first several tasks and a small catalog runs on one node of many. Ray's default (start at once)
    # elsewhere: a pool of another size may never place all its actors, and runs with those it has.
    # On this dataset's own context (a copy taken when it was built), not the process's.
    if layout.wait_for_actors:
        ds.context.wait_for_min_actors_s = ACTORS_START_S
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            batch, stop = without_unavailable(batch)
            if len(batch["uri"]):
                yield batch  # what was read before storage failed is still written
            if stop is not None:
                raise stop
    except ray.exceptions.GetTimeoutError as exc:
        if not layout.wait_for_actors:
            raise
        raise ActorsDidNotStart(
            f"the {layout.actors} model actors (one per node) did not all start within {ACTORS_START_S} s:"
            " a node has no free CPU for one, or the model is slow to load; set LIGHTBOX_SCORE_ACTORS"
            " to fewer actors than nodes (read tasks then decode on the others)"
        ) from exc


def without_unavailable(
    batch: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], StorageUnavailable | None]:
    """The batch less its UNAVAILABLE rows, and the StorageUnavailable to stop the job with (None where
    every read reached storage): those rows are neither scored nor written, so a rerun reads them again."""
    bad = batch["status"] == UNAVAILABLE
    if not bad.any():
        return batch, None
    first = int(np.flatnonzero(bad)[0])
    error = StorageUnavailable(f"reading {batch['uri'][first]}: {batch['error'][first]}")
    return {k: v[~bad] for k, v in batch.items()}, error


class ActorsDidNotStart(RuntimeError):
    """The per-node model actors did not all start in time (a busy or too-small node)."""


def _actor_pool(layout: Layout) -> Any:
    import ray

    if layout.calls > 1:
        # Calls overlap in each actor: one decodes its batch while another runs the model, so that the
        # cores are not idle at the seams between the two (the predictor is thread-safe: the server
        # runs batches side by side on it).
        return ray.data.ActorPoolStrategy(
            size=layout.actors,
            max_concurrent_calls_per_actor=layout.calls,
            enable_true_multi_threading=True,
        )
    return ray.data.ActorPoolStrategy(size=layout.actors)


def job_settings(
    source: str | None, model: str | None, out: str | None, online: bool | None = None
) -> tuple[Settings, str | None, str, str | None, str | None]:
    """(settings, source, out, alias, version) for a run whose arguments may be None (the DAG's params):
    ``model`` is a models:/ URI, whose name overrides settings.model_name; ``online`` overrides
    settings.score_online; the rest fall back to the settings' catalog_source and catalog_out."""
    from lightbox.settings import load_settings
    from pipelines.lineage import parse_model_uri

    name, version, alias = parse_model_uri(model) if model else (None, None, None)
    overrides: dict[str, object] = {"model_name": name} if name else {}
    if online is not None:
        overrides["score_online"] = online
    settings = load_settings(**overrides)
    return settings, source or settings.catalog_source, out or settings.catalog_out_path, alias, version
