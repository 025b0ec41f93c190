"""Hot swap: follow the registry alias, load + warm a new version beside the old, then swap atomically.

The old version keeps serving while the new one loads and warms up (in a worker thread, so the event
loop never stalls); the swap itself is one reference store in ``InferenceRuntime.swap``, and batches
already running finish on the version they started with. A version that fails to load (its files not
the ones the gates judged, or any other failure) is logged with its version, counted and kept as
``last_error`` for the health endpoints, and the old one stays.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from lightbox.adapters.mlflow_registry import ArtifactError
from lightbox.errors import known_error
from serving.minions import IsolatedPredictor
from serving.runtime import InferenceRuntime
from training.predictor import ModelNotFound, Predictor

log = logging.getLogger(__name__)


class ModelLoader(Protocol):
    """Where new versions come from (``predictor.RegistryLoader`` in production)."""

    def resolve(self) -> str: ...

    def load(self, version: str | None = None) -> Predictor: ...


@dataclass(frozen=True)
class ReloadError:
    version: str | None  # None: the alias itself could not be resolved
    message: str
    at: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "error": self.message, "at": self.at}


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
        # What health reports. The alias's name, when the loader follows one (RegistryLoader does);
        # until the first poll, the alias is taken to point at the version the app was started with
        # (serving.server loads the alias's version to build it).
        self.alias: str | None = getattr(loader, "alias", None)
        self.alias_version: str | None = runtime.predictor.version
        self.last_error: ReloadError | None = None
        self.alias_gone = False  # the last poll found no version under the alias
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def status(self) -> dict[str, Any]:
        """The alias's version at the last poll, the version served, and the last failed reload (cleared
        by the next swap): what a health check needs to see a server stuck on an old version."""
        return {
            "alias": self.alias,
            "alias_version": self.alias_version,
            "served_version": self.runtime.predictor.version,
            "last_reload_error": None if self.last_error is None else self.last_error.to_dict(),
        }

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def reload(self, force: bool = False) -> dict[str, object]:
        """Swap to the alias's current version if it changed (or always, with ``force``).

        Raises whatever resolving or loading raised, after counting and recording it (``last_error``);
        the old version keeps serving.
        """
        async with self._get_lock():  # one load at a time: two overlapping reloads would load twice
            current = self.runtime.predictor
            version: str | None = None
            new = None
            try:
                version = await asyncio.to_thread(self.loader.resolve)
                self.alias_version, self.alias_gone = version, False
                if version == current.version and not force:
                    return {"swapped": False, "version": current.version}
                new = await asyncio.to_thread(self.loader.load, version)
                await asyncio.to_thread(new.warmup, self.warmup_sizes)
            except Exception as exc:
                # The alias names no version now (removed): a canary/shadow pauses on it (serving.app).
                self.alias_gone = version is None and isinstance(exc, ModelNotFound)
                self.runtime.metrics.reload_failures.inc()
                now = datetime.now(UTC).replace(microsecond=0).isoformat()
                self.last_error = ReloadError(version, f"{type(exc).__name__}: {exc}", now)
                if isinstance(new, IsolatedPredictor):  # loaded, failed its warm-up: its worker goes
                    await asyncio.to_thread(new.close)
                raise
            old = self.runtime.swap(new)
            if isinstance(old, IsolatedPredictor):  # its worker stops once its running batches are done
                old.retire()
            self.last_error = None
            log.info("hot swap: %s v%s -> v%s", new.name, old.version, new.version)
            return {"swapped": True, "from": old.version, "version": new.version}

    async def follow(self) -> None:
        """Poll the alias forever (a background task of the app's lifespan). A failure is logged when it
        first happens, naming the version; the same failure on the next polls is not logged again."""
        logged: tuple[str | None, str] | None = None
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.reload()
                logged = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken new version must not take the serving one down: log, go on
                failed = self.last_error
                key = None if failed is None else (failed.version, failed.message)
                if key is None or key != logged:
                    logged = key
                    self._log_failure(exc, failed)

    def _log_failure(self, exc: Exception, failed: ReloadError | None) -> None:
        served = self.runtime.predictor.version
        what = f"load v{failed.version}" if failed and failed.version else f"resolve @{self.alias}"
        if isinstance(exc, ArtifactError):  # a known refusal: its message names version and file
            log.error("hot swap: refused to %s: %s; still serving v%s", what, exc, served)
        elif known_error(exc) is not None:  # the alias removed (ModelNotFound), the registry away, ...
            one_line = " ".join(str(exc).split())
            log.error("hot swap: could not %s: %s; still serving v%s", what, one_line, served)
        else:
            log.exception("hot swap: could not %s; still serving v%s", what, served)
