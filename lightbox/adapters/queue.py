"""RabbitMQ through pika: the only module that imports it. The upload queue, its dead-letter queue, and
publishing with confirms.

Topology, declared identically by producers and the consumer (a mismatch is a channel error):
``<queue_name>`` is a durable quorum queue whose rejected or over-redelivered messages (after
``queue_delivery_limit`` deliveries, e.g. an image that crashes the consumer every time) go through the
default exchange to ``<queue_name>.dead``. The consumer also publishes messages it can never score
there itself, with the reason in a header, before it acknowledges them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lightbox.adapters import ServiceUnavailable
from lightbox.settings import Settings, redact_url

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

DEAD_SUFFIX = ".dead"
REASON_HEADER = "x-lightbox-reason"


def dead_letter_queue(settings: Settings) -> str:
    return settings.queue_name + DEAD_SUFFIX


@dataclass(frozen=True)
class Delivery:
    tag: int
    body: bytes
    redelivered: bool
    headers: dict[str, Any]


def connect(settings: Settings) -> BlockingConnection:
    import pika

    params = pika.URLParameters(settings.queue_url)
    try:
        return pika.BlockingConnection(params)
    except pika.exceptions.AMQPConnectionError as exc:
        raise ServiceUnavailable(
            f"cannot reach the queue at {redact_url(settings.queue_url)} "
            f"({type(exc).__name__}): check LIGHTBOX_QUEUE_URL"
        ) from None


def declare(channel: BlockingChannel, settings: Settings) -> None:
    """Declare the upload queue and its dead-letter queue (idempotent)."""
    dead = dead_letter_queue(settings)
    # Quorum queues: replicated on a cluster, and the only kind that counts deliveries (x-delivery-limit).
    channel.queue_declare(dead, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_declare(
        settings.queue_name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",  # the default exchange routes by queue name
            "x-dead-letter-routing-key": dead,
            "x-delivery-limit": settings.queue_delivery_limit,
        },
    )


def _properties(headers: dict[str, Any] | None = None):
    import pika

    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        headers=headers,
    )


def publish(settings: Settings, messages: Iterable[dict[str, Any]]) -> int:
    """Publish JSON messages to the upload queue; returns when the broker has confirmed every one."""
    conn = connect(settings)
    try:
        channel = conn.channel()
        declare(channel, settings)
        channel.confirm_delivery()  # basic_publish now raises unless the broker took the message
        n = 0
        for message in messages:
            channel.basic_publish(
                "", settings.queue_name, json.dumps(message).encode(), _properties(), mandatory=True
            )
            n += 1
        return n
    finally:
        conn.close()


def publish_dead(channel: BlockingChannel, settings: Settings, delivery: Delivery, reason: str) -> None:
    """Copy a message to the dead-letter queue with why; ``channel`` must be in confirm mode."""
    headers = dict(delivery.headers) | {REASON_HEADER: reason[:1000]}
    channel.basic_publish(
        "", dead_letter_queue(settings), delivery.body, _properties(headers), mandatory=True
    )


def deliveries(channel: BlockingChannel, settings: Settings, tick_s: float) -> Iterator[Delivery | None]:
    """Messages from the upload queue; None every ``tick_s`` of silence (lets the caller flush or stop)."""
    for method, props, body in channel.consume(settings.queue_name, inactivity_timeout=tick_s):
        if method is None:
            yield None
            continue
        yield Delivery(
            tag=method.delivery_tag,
            body=body,
            redelivered=bool(method.redelivered),
            headers=dict(props.headers or {}),
        )


def drain(settings: Settings, queue: str, limit: int = 10_000) -> list[Delivery]:
    """Read (and acknowledge) what a queue holds now: for inspecting the dead-letter queue."""
    conn = connect(settings)
    try:
        channel = conn.channel()
        out: list[Delivery] = []
        while len(out) < limit:
            method, props, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            out.append(
                Delivery(method.delivery_tag, body, bool(method.redelivered), dict(props.headers or {}))
            )
        return out
    finally:
        conn.close()


def depth(settings: Settings, queue: str) -> int:
    """Messages ready in a queue (not counting unacknowledged ones)."""
    conn = connect(settings)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()
