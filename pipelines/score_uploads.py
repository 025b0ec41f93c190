"""Stage: score newly uploaded images from the upload queue with the champion, into PostgreSQL.

A message names one image: ``{"uri": "s3://bucket/key.jpg"}`` (also ``file://`` or an absolute path).
Each row is keyed by the image id of the bytes scored (lightbox.photos.content_id: the content hash, the
id bulk scoring and the importer use), whatever ``image_id`` a message also carries: two photos with the
same file name are two rows, and one photo is one row however it was sent. The consumer takes up to
``consume_batch_size`` messages (the broker prefetch is the same number) or what came within
``consume_max_wait_s``, scores them in one forward pass, upserts the rows keyed by (image_id,
model_name, model_version), commits, and only then acknowledges. Hence:

- a crash before the commit loses nothing: unacknowledged messages are delivered again;
- a crash between commit and ack duplicates nothing: the redelivery upserts the same rows;
- a message that can never be scored (bad JSON, a missing or undecodable image) is copied to the
  dead-letter queue with the reason, then acknowledged, so it neither blocks nor loops;
- anything else (database, S3 or broker down, the model failing) is not the message's fault: the
  consumer stops without acknowledging, and a restart retries. A message that kills the consumer
  every time is dead-lettered by the broker after ``queue_delivery_limit`` deliveries.

The batch logic (``parse``, ``prepare``, ``to_rows``) is pure and unit-tested; ``run`` does the I/O.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import numpy as np

from lightbox.adapters.postgres import ResultRow
from lightbox.adapters.queue import Delivery
from lightbox.catalog import permanent
from lightbox.imaging import ImageDecodeError, preprocess_bytes
from lightbox.photos import content_id
from lightbox.settings import Settings

if TYPE_CHECKING:
    from training.predictor import Predictor

log = logging.getLogger(__name__)


class Poison(ValueError):
    """This message can never be scored; the text is the reason recorded in the dead-letter queue."""


@dataclass(frozen=True)
class Upload:
    uri: str


@dataclass(frozen=True)
class Prepared:
    delivery: Delivery
    upload: Upload
    image_id: str  # the content hash of the bytes scored (lightbox.photos.content_id): the row's key
    pixels: np.ndarray  # uint8 [3, 224, 224]


@dataclass(frozen=True)
class BatchPlan:
    ready: list[Prepared]
    poison: list[tuple[Delivery, str]]


def parse(body: bytes) -> Upload:
    """The upload a message names. An ``image_id`` in it (older producers sent the file name) is not
    used: a row's id is the hash of the bytes scored, which a message cannot know before they are read."""
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Poison(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise Poison(f"expected a JSON object, got {type(message).__name__}")
    uri = message.get("uri")
    if not isinstance(uri, str) or not uri:
        raise Poison("uri must be a non-empty string")
    return Upload(uri)


def prepare(deliveries: Sequence[Delivery], fetch: Callable[[str], bytes], max_pixels: int) -> BatchPlan:
    """Parse, fetch and decode each message; the ones that can never work become (delivery, reason).

    ``fetch`` raises FileNotFoundError for a missing image, or an error about the file itself (permission
    denied, a symlink loop: lightbox.catalog.permanent), both poison, and anything else for a transient
    failure, which propagates: the batch is then retried rather than dead-lettered.
    """
    ready, poison = [], []
    for d in deliveries:
        try:
            upload = parse(d.body)
            try:
                data = fetch(upload.uri)
            except FileNotFoundError as exc:
                raise Poison(f"image not found: {exc}") from None
            except OSError as exc:
                if not permanent(exc):  # storage trouble: the batch is retried
                    raise
                raise Poison(f"image unreadable: {exc}") from None
            try:
                pixels = preprocess_bytes(data, max_pixels=max_pixels)
            except ImageDecodeError as exc:
                raise Poison(f"undecodable image {upload.uri}: {exc}") from None
        except Poison as exc:
            poison.append((d, str(exc)))
            continue
        ready.append(Prepared(d, upload, content_id(data), pixels))
    return BatchPlan(ready, poison)


def to_rows(
    ready: Sequence[Prepared],
    scores: np.ndarray,
    tag_probs: np.ndarray,
    tag_names: Sequence[str],
    model_name: str,
    model_version: str,
) -> list[ResultRow]:
    """One row per image, keyed by its content hash; the same bytes sent twice in one batch (under any
    names) keep the last message's row."""
    if len(scores) != len(ready) or len(tag_probs) != len(ready):
        raise ValueError(f"model returned {len(scores)} scores for {len(ready)} images")
    rows: dict[str, ResultRow] = {}
    for item, score, probs in zip(ready, scores, tag_probs, strict=True):
        rows[item.image_id] = ResultRow(
            image_id=item.image_id,
            model_name=model_name,
            model_version=model_version,
            score=None if np.isnan(score) else float(score),  # NaN: a tags-only model
            tag_probs={name: round(float(p), 6) for name, p in zip(tag_names, probs, strict=True)},
            source_uri=item.upload.uri,
        )
    return list(rows.values())


def fetch_image(settings: Settings, uri: str) -> bytes:
    """Bytes of the image a message names: s3://, file:// or an absolute path."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        from lightbox.adapters import s3

        return s3.read(uri, settings.s3_endpoint_url)  # ObjectNotFound is a FileNotFoundError
    if parts.scheme == "file" or (not parts.scheme and uri.startswith("/")):
        return Path(unquote(parts.path)).read_bytes()
    raise Poison(f"unsupported uri {uri!r}: expected s3://, file:// or an absolute path")


# --- the consumer ------------------------------------------------------------------------------------


@dataclass
class ConsumeStats:
    model_version: str = ""
    messages: int = 0
    scored: int = 0
    dead: int = 0
    batches: int = 0
    online: int = 0  # rows published to the Feast online store (settings.score_online)
    seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)


class _Stop:
    """SIGTERM/SIGINT finish the current batch (commit + ack), then exit: a deploy never loses work."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (a test's thread): no handler, stop by limits
                break
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def run(
    settings: Settings,
    *,
    predictor=None,
    max_messages: int | None = None,
    idle_timeout_s: float | None = None,
) -> ConsumeStats:
    """Consume until stopped (signal), ``max_messages`` handled, or ``idle_timeout_s`` without any.

    ``predictor`` defaults to the champion (training.predictor.load_predictor), refused (ArtifactError,
    naming the version and file) unless its files match the digest the gates recorded; the same one
    scores every batch of this run, so each row's model_version is the version that computed it.
    """
    from lightbox.adapters import postgres, queue

    if not settings.results_dsn:
        raise ValueError("results_dsn is not set: the consumer writes to PostgreSQL (LIGHTBOX_RESULTS_DSN)")
    if predictor is None:
        from lightbox.adapters.mlflow_registry import ArtifactError
        from training.predictor import load_predictor

        try:
            predictor = load_predictor(settings)  # files checked against the gates' digest
        except ArtifactError as exc:
            # Rows scored by files nobody judged would be kept as the champion's: stop before taking
            # any message, which waits in the queue for a version that verifies.
            log.error("upload consumer not started: %s", exc)
            raise
    stats = ConsumeStats(model_version=predictor.version)
    publish = _online(settings, predictor) if settings.score_online else None
    db = postgres.connect(settings.results_dsn)
    postgres.ensure_results_table(db, settings.results_table)
    conn = queue.connect(settings)
    t0 = time.monotonic()
    try:
        channel = conn.channel()
        queue.declare(channel, settings)
        channel.basic_qos(prefetch_count=settings.consume_batch_size)
        dead_channel = conn.channel()
        dead_channel.confirm_delivery()  # the dead letter must be safe before we ack the original

        def flush(batch: list[Delivery]) -> None:
            plan = prepare(batch, lambda uri: fetch_image(settings, uri), settings.max_pixels)
            if plan.ready:
                pixels = np.stack([p.pixels for p in plan.ready])
                scores, probs = predictor.predict(pixels)
                rows = to_rows(
                    plan.ready, scores, probs, predictor.tag_names, predictor.name, predictor.version
                )
                if publish is not None:  # online before the commit: a crash between redelivers, rewrites
                    stats.online += publish(plan.ready, rows, pixels)
                postgres.upsert_results(db, settings.results_table, rows)  # commits
            for delivery, reason in plan.poison:
                log.warning("dead-lettering message %d: %s", delivery.tag, reason)
                queue.publish_dead(dead_channel, settings, delivery, reason)
                stats.reasons.append(reason)
            channel.basic_ack(delivery_tag=batch[-1].tag, multiple=True)  # only after the commit
            stats.messages += len(batch)
            stats.scored += len(plan.ready)
            stats.dead += len(plan.poison)
            stats.batches += 1

        batch: list[Delivery] = []
        deadline = idle_since = time.monotonic()
        tick = min(0.1, settings.consume_max_wait_s) or 0.05
        with _Stop() as stop:
            for delivery in queue.deliveries(channel, settings, tick_s=tick):
                now = time.monotonic()
                if delivery is not None:
                    if not batch:
                        deadline = now + settings.consume_max_wait_s
                    batch.append(delivery)
                    idle_since = now
                full = len(batch) >= settings.consume_batch_size
                if batch and (full or now >= deadline or stop.requested):
                    flush(batch)
                    batch = []
                if stop.requested or (max_messages is not None and stats.messages >= max_messages):
                    break
                if not batch and idle_timeout_s is not None and now - idle_since >= idle_timeout_s:
                    break
            channel.cancel()  # prefetched, unacknowledged messages go back to the queue
    finally:
        stats.seconds = time.monotonic() - t0
        if conn.is_open:
            conn.close()
        db.close()
    return stats


def _online(
    settings: Settings, predictor: Predictor
) -> Callable[[Sequence[Prepared], list[ResultRow], np.ndarray], int]:
    """What publishes a batch's rows with their embeddings to Feast (the scores view, online), as the
    bulk job does: a search service reads an upload's score by image id as soon as it is committed."""
    from lightbox.results import ScoreRow
    from pipelines.score_catalog import OnlinePublisher, extractor_embedding

    publisher = OnlinePublisher(settings)
    embed = extractor_embedding(predictor)

    def publish(ready: Sequence[Prepared], rows: list[ResultRow], pixels: np.ndarray) -> int:
        vectors = embed(pixels)
        embeddings = {item.image_id: vectors[i] for i, item in enumerate(ready)}  # last one wins
        as_scores = [
            ScoreRow(
                uri=r.source_uri,
                image_id=r.image_id,
                content_hash=None,
                model_name=r.model_name,
                model_version=r.model_version,
                score=r.score,
                tag_probs=r.tag_probs,
            )
            for r in rows
        ]
        return publisher(as_scores, embeddings)

    return publish
