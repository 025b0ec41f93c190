"""Hot swap: follow the registry alias, load + warm a new version beside the old, then swap atomically.

The old version keeps serving while the new one loads and warms up (in a worker thread, so the event
loop never stalls); the swap itself is one reference store in ``InferenceRuntime.swap``, and batches
already running finish on the version they started with. A version that fails to load is logged and
counted, and the old one stays.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from serving.runtime import InferenceRuntime
from training.predictor import Predictor

log = logging.getLogger(__name__)


class ModelLoader(Protocol):
    """Where new versions come from (``predictor.RegistryLoader`` in production)."""

    def resolve(self) -> str: ...

    def load(self, version: str | None = None) -> Predictor: ...


class HotSwapper:
    def __init__(
        self,
        runtime: InferenceRuntime,
        loader: ModelLoader,
        *,
        interval_s: float,
        warmup_sizes: tuple[int, ...],
    ) -> None:
        self.runtime = runtime
        self.loader = loader
        self.interval_s = interval_s
        self.warmup_sizes = warmup_sizes
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def reload(self, force: bool = False) -> dict[str, object]:
        """Swap to the alias's current version if it changed (or always, with ``force``).

        Raises whatever resolving or loading raised, after counting it; the old version keeps serving.
        """
        async with self._get_lock():  # one load at a time: two overlapping reloads would load twice
            current = self.runtime.predictor
            try:
                version = await asyncio.to_thread(self.loader.resolve)
                if version == current.version and not force:
                    return {"swapped": False, "version": current.version}
                new = await asyncio.to_thread(self.loader.load, version)
                await asyncio.to_thread(new.warmup, self.warmup_sizes)
            except Exception:
                self.runtime.metrics.reload_failures.inc()
                raise
            old = self.runtime.swap(new)
            log.info("hot swap: %s v%s -> v%s", new.name, old.version, new.version)
            return {"swapped": True, "from": old.version, "version": new.version}

    async def follow(self) -> None:
        """Poll the alias forever (a background task of the app's lifespan)."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception:  # a broken new version must not take the serving one down: log, go on
                log.exception(
                    "hot swap: could not load the alias's new version; still serving v%s",
                    self.runtime.predictor.version,
                )
