"""The primary model's challenger in a running server: canary routing and shadow comparisons
(serving/canary.py holds the pure decisions and the agreement math).

The challenger has its own runtime (batcher, compute threads, hot swap): a shadow request waits in its
queue, never in the champion's, and is dropped (counted) when the challenger's admission refuses it, so
a slow challenger costs the champion's users nothing but shared cores.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import numpy as np

from serving.admission import Refused
from serving.canary import Agreement, ShadowMetrics, routes_to_challenger, unit_score
from serving.multi import ServedModel
from serving.runtime import Prediction

log = logging.getLogger(__name__)

# Writes the agreement onto the challenger's registry version: (version, tags).
Recorder = Callable[[str, dict[str, str]], None]


class Challenger:
    def __init__(
        self,
        model: ServedModel,
        *,
        canary_percent: float,
        shadow_fraction: float,
        tag_threshold: float,
        champion_tags: tuple[str, ...],
        recorder: Recorder | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.model = model
        self.canary_percent, self.shadow_fraction = canary_percent, shadow_fraction
        self.recorder = recorder
        self._rng = rng or random.Random()
        self._threshold = tag_threshold
        self._champion_tags = champion_tags
        self.agreement = self._fresh_agreement()
        self.metrics = ShadowMetrics(model.runtime.registry, lambda: self.agreement.summary())
        self._version = model.runtime.predictor.version
        self._tasks: set[asyncio.Task[None]] = set()

    def _fresh_agreement(self) -> Agreement:
        predictor = self.model.runtime.predictor
        agreement = Agreement(self._champion_tags, predictor.tag_names, self._threshold)
        if agreement.not_compared:  # once per challenger version: a renamed tag is no silent pass
            log.warning(
                "shadow: challenger v%s compares tags [%s] with the champion; not compared (one side "
                "only): [%s]",
                predictor.version,
                ", ".join(agreement.shared),
                ", ".join(agreement.not_compared),
            )
        return agreement

    def routes(self, key: str | None) -> bool:
        """This request is answered by the challenger (canary), sticky per key."""
        return routes_to_challenger(key, self.canary_percent, self.model.name, self._rng)

    def shadow(self, images: list[np.ndarray], champion: list[Prediction]) -> None:
        """Maybe (``shadow_fraction``) compute the same images on the challenger in the background and
        compare; the caller's answer is already made and never waits for it."""
        if self.shadow_fraction <= 0 or self._rng.random() >= self.shadow_fraction:
            return
        task = asyncio.create_task(self._compare(images, champion))
        self._tasks.add(task)  # a reference, or the loop may collect the task mid-flight
        task.add_done_callback(self._tasks.discard)

    async def _compare(self, images: list[np.ndarray], champion: list[Prediction]) -> None:
        runtime = self.model.runtime
        try:
            ticket = runtime.admission.admit(len(images))
            try:
                preds = await runtime.infer(images, "shadow", ticket)
            finally:
                ticket.release()
        except Refused:
            self.metrics.failures.inc()
            return
        except Exception:  # the shadow's failure is the challenger's problem, never the request's
            self.metrics.failures.inc()
            log.debug("shadow request failed", exc_info=True)
            return
        if preds[0].predictor.version != self._version:  # the challenger was swapped: start over
            self._version = preds[0].predictor.version
            self.agreement = self._fresh_agreement()
        # Each side on the unit scale of its own model: a challenger may be trained on another scale.
        self.agreement.add(
            np.array([unit_score(p.score, p.predictor.score_range) for p in champion]),
            np.array([unit_score(p.score, p.predictor.score_range) for p in preds]),
            np.stack([p.tag_probs for p in champion]),
            np.stack([p.tag_probs for p in preds]),
        )

    async def drain(self) -> None:
        """Wait for the shadow requests in flight (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def record(self) -> dict[str, str] | None:
        """Write the agreement so far onto the challenger's version (what `lightbox promote` reads)."""
        summary = self.agreement.summary()
        if self.recorder is None or summary.samples == 0:
            return None
        tags = summary.to_tags()
        self.recorder(self._version, tags)
        return tags

    async def record_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.record)
            except Exception:  # the registry may be away for a while: the next round tries again
                log.exception("could not record the shadow agreement on v%s", self._version)
