"""Stop a request's work when its client leaves: a client that gave up (its own timeout, a closed tab, a
phone out of signal) reads no answer, so its queued images would take a batch's place from the ones
still waited for, exactly when the server is busiest and clients give up most."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import ClientDisconnect, Request

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    """Returns when the server reports the client gone. Called once the body is read: the server's next
    message is ``http.disconnect``, sent when the connection closes or once the answer is sent."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result; if the client disconnects first, ``work`` is cancelled (its images leave the
    batcher's queue unless their batch already runs) and ClientDisconnect is raised (a 499, counted as
    such, not as an answer). Only after the body has been read: the watcher reads the request's
    messages."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Cancelled ourselves (the server shutting down), or one of the two done: end the other.
        if not task.done():
            task.cancel()
            # A failure while it unwinds is nobody's to report: nobody is left to answer.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if task.done() and not task.cancelled():
        return task.result()
    # Its unwinding ends before the request does: decodes already running hold its admission till then.
    await asyncio.wait((task,))
    raise ClientDisconnect()
