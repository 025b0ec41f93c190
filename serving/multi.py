"""Several models in one server: each its own runtime (batcher, queue, admission, hot swap), one request
decoded once and fanned out to the models it selects, their answers merged.

A server of one model is the case of a one-entry ``ModelSet``: its answers are today's, field for field.
With several, ``/predict`` answers for every selected model (``?models=a,b``; default: all), the
top-level fields from the first that answered, and a ``models`` block with each model's answer or
error. A model that fails, misses its deadline (``serve_model_timeout_ms``) or refuses at admission
does not fail the others: the answer is 200 while one of them answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from serving.admission import Refused, Ticket
from serving.batching import BatcherClosed
from serving.reload import HotSwapper
from serving.runtime import ApiError, InferenceRuntime, Prediction, overloaded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """One model the server answers for, under ``name`` (``?models=``, ``/v2/models/{name}``)."""

    name: str
    runtime: InferenceRuntime
    swapper: HotSwapper | None = None


class ModelSet:
    """The served models in order; the first is the primary (the one a one-model server serves)."""

    def __init__(self, models: Sequence[ServedModel]) -> None:
        if not models:
            raise ValueError("a server needs at least one model")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be distinct, got {names}")
        self._models = {m.name: m for m in models}
        self.primary = models[0]

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    @property
    def several(self) -> bool:
        return len(self._models) > 1

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str) -> ServedModel:
        try:
            return self._models[name]
        except KeyError:
            served = self.primary.name if not self.several else self.names
            raise ApiError(404, f"unknown model {name!r}; this server serves {served!r}") from None

    def select(self, query: str | None) -> list[ServedModel]:
        """The models a ``?models=a,b`` names, in its order (None or empty: all). Unknown -> 400."""
        if not query or not query.strip():
            return list(self)
        wanted = list(dict.fromkeys(n.strip() for n in query.split(",") if n.strip()))
        unknown = [n for n in wanted if n not in self._models]
        if unknown:
            raise ApiError(400, f"unknown model(s) {unknown} in ?models=; this server serves {self.names}")
        return [self._models[n] for n in wanted]

    def known(self, query: str | None) -> list[ServedModel]:
        """Like ``select``, silently skipping unknown names (admission runs before the handler says 400)."""
        try:
            return self.select(query)
        except ApiError:
            names = [n.strip() for n in (query or "").split(",")]
            return [self._models[n] for n in dict.fromkeys(names) if n in self._models]


class MultiTicket:
    """One request's admission across the models it selects: a ``Ticket`` at each model that admitted
    it, and the refusals of the others (reported in the answer). It refuses only when every model does.
    """

    def __init__(self, tickets: dict[str, Ticket], refused: dict[str, Refused]) -> None:
        self.tickets, self.refused = tickets, refused

    @classmethod
    def admit(cls, models: Iterable[ServedModel], n: int = 1) -> MultiTicket:
        tickets: dict[str, Ticket] = {}
        refused: dict[str, Refused] = {}
        for m in models:
            try:
                tickets[m.name] = m.runtime.admission.admit(n)
            except Refused as exc:
                refused[m.name] = exc
        out = cls(tickets, refused)
        out._raise_if_none_left()
        return out

    def extend(self, n: int, extra: float = 0.0) -> None:
        """Hold ``n`` images (and ``extra``: Ticket.extend) at each model that still admits the request;
        Refused when none does."""
        for name, ticket in list(self.tickets.items()):
            try:
                ticket.extend(n, extra)
            except Refused as exc:  # the ticket released itself
                del self.tickets[name]
                self.refused[name] = exc
        self._raise_if_none_left()

    def set_timeout(self, seconds: float) -> None:
        for ticket in self.tickets.values():
            ticket.set_timeout(seconds)

    @property
    def deadline(self) -> float | None:
        deadlines = [t.deadline for t in self.tickets.values() if t.deadline is not None]
        return min(deadlines, default=None)

    def _raise_if_none_left(self) -> None:
        if not self.tickets and self.refused:
            raise next(iter(self.refused.values()))

    def release(self) -> None:
        for ticket in self.tickets.values():
            ticket.release()

    def answered(self, seconds: float) -> None:
        for ticket in self.tickets.values():
            ticket.answered(seconds)


@dataclass(frozen=True)
class ModelError:
    """A model's failed part of a merged answer."""

    status: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


async def infer_one(
    model: ServedModel, images: list, protocol: str, ticket: Ticket, timeout_s: float | None
) -> list[Prediction]:
    """One model's predictions for a request's decoded images, within its deadline (TimeoutError)."""
    job = model.runtime.infer(images, protocol, ticket)
    return await (job if timeout_s is None else asyncio.wait_for(job, timeout_s))


async def infer_all(
    models: list[ServedModel],
    images: list,
    protocol: str,
    ticket: MultiTicket,
    timeout_s: float | None,
) -> dict[str, list[Prediction] | ModelError]:
    """Every selected model's predictions (or error), side by side: each model has its own batcher and
    compute threads, so a slow one delays only its own entry. Models that refused at admission get
    their 429 as an error without being asked."""

    async def guarded(m: ServedModel) -> list[Prediction] | ModelError:
        refused = ticket.refused.get(m.name)
        if refused is not None:
            return _as_error(overloaded(refused))
        try:
            return await infer_one(m, images, protocol, ticket.tickets[m.name], timeout_s)
        except TimeoutError:
            ms = round((timeout_s or 0) * 1000)
            return ModelError(504, f"model {m.name!r} missed its deadline of {ms} ms")
        except ApiError as exc:
            return _as_error(exc)
        except BatcherClosed:
            return ModelError(503, "server is shutting down")
        except Exception as exc:  # one model's bug: logged, reported in its entry, the others answer
            log.exception("model %s failed", m.name)
            return ModelError(500, f"internal error: {type(exc).__name__}")

    results = await asyncio.gather(*(guarded(m) for m in models))
    return dict(zip((m.name for m in models), results, strict=True))


def _as_error(exc: ApiError) -> ModelError:
    return ModelError(exc.status, exc.message)


def first_answer(
    results: dict[str, list[Prediction] | ModelError],
) -> tuple[str, list[Prediction]]:
    """The first model (in the request's order) that answered; ApiError with the first model's status
    when none did."""
    for name, r in results.items():
        if not isinstance(r, ModelError):
            return name, r
    errors = [(n, r) for n, r in results.items() if isinstance(r, ModelError)]
    status = errors[0][1].status
    detail = "; ".join(f"{n}: {e.message}" for n, e in errors)
    raise ApiError(status, f"no model answered ({detail})")


class LabelledRegistries:
    """A Prometheus collector that exports several apps' registries as one, each sample labelled with
    its model (``model="NAME"``): every runtime keeps its own metrics objects (the one-model code), and
    one ``/metrics`` shows them all under the usual names."""

    def __init__(self, base: CollectorRegistry, per_model: dict[str, CollectorRegistry]) -> None:
        self.base, self.per_model = base, per_model

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for metric in self.base.collect():
            families[metric.name] = metric
        for model, registry in self.per_model.items():
            for metric in registry.collect():
                merged = families.get(metric.name)
                if merged is None:
                    merged = families[metric.name] = Metric(metric.name, metric.documentation, metric.type)
                merged.samples.extend(
                    Sample(s.name, {"model": model, **s.labels}, s.value, s.timestamp, s.exemplar)
                    for s in metric.samples
                )
        yield from families.values()
