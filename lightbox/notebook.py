"""Score photos from Python (a notebook, a script) the way `lightbox serve` does, into a DataFrame.

The registered MLflow model takes what the server's model takes: uint8 [N,3,224,224] after the
server's decode (EXIF orientation, reduced-size JPEG decoding, RGB), and answers an unnamed
[N, 1 + tags] tensor. A data scientist wants to hand it their photos and read scores on their own
scale beside tag names; this is that, with the same loader (runtime choice, artifact digest check) and
the same decode, so its numbers are the endpoint's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lightbox.imaging import ImageDecodeError, preprocess_bytes

if TYPE_CHECKING:
    import pandas as pd

    from training.predictor import Predictor

Photo = str | Path | bytes


def load(model: str = "models:/lightbox@champion") -> Predictor:
    """The registered version ``model`` names (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``), loaded
    as the server loads it, from the tracking URI of the settings (LIGHTBOX_* environment)."""
    from lightbox.settings import load_settings
    from pipelines.lineage import parse_model_uri
    from training.predictor import RegistryLoader

    name, version, alias = parse_model_uri(model)
    settings = load_settings(model_name=name)
    return RegistryLoader(settings, alias or settings.champion_alias).load(version)


def score_photos(
    photos: Iterable[Photo],
    model: str | Predictor = "models:/lightbox@champion",
    *,
    threshold: float = 0.5,
    batch_size: int = 32,
) -> pd.DataFrame:
    """One row per photo (a path or encoded bytes): ``photo`` (the path, or ``bytes[i]``), ``score`` on
    the model's scale (NaN for a tags-only model or an unreadable photo), ``tags`` (the names at or over
    ``threshold``), a ``p_<tag>`` probability column per tag, ``error`` (why a photo could not be read,
    else None) and ``model``. An unreadable photo is a row with its error, never an exception."""
    import pandas as pd

    predictor = load(model) if isinstance(model, str) else model
    rows: list[dict[str, object]] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        scores, probs = predictor.predict(np.stack([x for _, x in pending]))
        for (i, _), s, p in zip(pending, scores, probs, strict=True):
            rows[i]["score"] = float(s)
            rows[i]["tags"] = [t for t, q in zip(predictor.tag_names, p, strict=True) if q >= threshold]
            rows[i].update({f"p_{t}": float(q) for t, q in zip(predictor.tag_names, p, strict=True)})
        pending.clear()

    for i, photo in enumerate(photos):
        row: dict[str, object] = {"photo": _name(photo, i), "score": float("nan"), "tags": [], "error": None}
        rows.append(row)
        try:
            pending.append((i, preprocess_bytes(_read(photo))))
        except (ImageDecodeError, OSError) as exc:
            row["error"] = str(exc)
        if len(pending) >= batch_size:
            flush()
    flush()
    frame = pd.DataFrame(rows, columns=_columns(predictor.tag_names))
    frame["model"] = f"models:/{predictor.name}/{predictor.version}"
    frame.attrs.update(score_name=predictor.score_name, score_range=predictor.score_range)
    return frame


def _columns(tags: Sequence[str]) -> list[str]:
    return ["photo", "score", "tags", *(f"p_{t}" for t in tags), "error"]


def _name(photo: Photo, i: int) -> str:
    return f"bytes[{i}]" if isinstance(photo, bytes) else str(photo)


def _read(photo: Photo) -> bytes:
    return photo if isinstance(photo, bytes) else Path(photo).expanduser().read_bytes()
