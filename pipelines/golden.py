"""Stage: the frozen golden set the promotion gates judge every model on.

Never trained or tuned on: it lives in its own folder (``settings.golden_dir``, tracked by its own
``golden.dvc``) and its scenes are rendered from a seed stream that the training sources never draw
from (``SeedSequence([golden_seed, GOLDEN_STREAM, i])``; training uses stream 0), with ids prefixed
``golden-``. Each source appears pristine and with every distortion kind at every level, so the
direction and minimum-functionality checks have a full grid to read::

    <golden_dir>/images/golden-000-blur-3.png
    <golden_dir>/manifest.csv   (pipelines.data.MANIFEST_COLUMNS, split = "golden")

Small on purpose (31 images per source, 93 by default): the gates run on every promotion.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightbox import distortions
from lightbox.adapters import dvc_repo
from lightbox.adapters.dvc_repo import DatasetVersion
from lightbox.dataset import Distortion, procedural_scene, score_for, tags_for
from lightbox.settings import Settings
from pipelines.data import (
    IMAGES_SUBDIR,
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    _child_seed,
    render,
    swap_in,
    write_manifest,
)

GOLDEN_STREAM = 9_001  # SeedSequence path element: training sources use 0, variants 1
SPLIT = "golden"


@dataclass(frozen=True)
class GoldenResult:
    golden_dir: Path
    n_images: int
    n_sources: int
    version: DatasetVersion | None  # None when built without versioning


def plan_grid() -> list[list[Distortion]]:
    """Pristine first, then every (kind, level): the full grid the behavioural checks read."""
    return [[]] + [[(kind, level)] for kind in distortions.KINDS for level in distortions.LEVELS]


def build(settings: Settings) -> tuple[Path, int]:
    """Render the golden set into settings.golden_dir (atomically replaced). Same settings, same bytes."""
    target = settings.golden_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        (tmp / IMAGES_SUBDIR).mkdir()
        rows = []
        for i in range(settings.golden_sources):
            source_id = f"golden-{i:03d}"
            img, content = procedural_scene(
                _child_seed(settings.golden_seed, GOLDEN_STREAM, i), settings.image_max_side
            )
            rng = np.random.default_rng(_child_seed(settings.golden_seed, GOLDEN_STREAM + 1, i))
            for plan in plan_grid():
                label = "-".join(f"{k}-{lvl}" for k, lvl in plan) or "pristine"
                image_id = f"{source_id}-{label}"
                data, ext = render(img, plan, rng)
                rel = f"{IMAGES_SUBDIR}/{image_id}{ext}"
                (tmp / rel).write_bytes(data)
                rows.append(
                    {
                        "image_id": image_id,
                        "path": rel,
                        "source_id": source_id,
                        "split": SPLIT,
                        "score": f"{score_for(plan):.4f}",
                        "tags": "|".join(tags_for(plan, content)),
                        "distortions": "+".join(f"{k}:{lvl}" for k, lvl in plan) or "none",
                        "max_level": str(max((lvl for _, lvl in plan), default=0)),
                        "width": str(img.size[0]),
                        "height": str(img.size[1]),
                    }
                )
        write_manifest(tmp / MANIFEST_NAME, MANIFEST_COLUMNS, sorted(rows, key=lambda r: r["image_id"]))
        os.chmod(tmp, 0o755)
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, len(rows)


def run(settings: Settings, *, rebuild: bool = False) -> GoldenResult:
    """Build (if absent, or when ``rebuild``) and version the golden set with DVC. Re-runnable.

    Frozen: an existing golden set is never silently re-rendered, because changing it changes every
    comparison against the champion. ``rebuild`` is for the day its definition changes on purpose.
    """
    manifest = settings.golden_dir / MANIFEST_NAME
    if rebuild or not manifest.exists():
        tracked = None if rebuild else dvc_repo.tracked_md5(settings, settings.golden_subdir)
        # Tracked but not checked out (a fresh clone): restore the frozen bytes. With nothing to restore
        # from (an empty local remote), re-render: the build is deterministic, and the hash check
        # below refuses any golden set that is not byte-for-byte the frozen one.
        if not (tracked and dvc_repo.restore_path(settings, settings.golden_subdir)):
            build(settings)
            if tracked and not dvc_repo.matches_tracked(settings, settings.golden_subdir):
                raise RuntimeError(
                    f"the golden set is tracked as {tracked} but is not in the DVC remote, and "
                    "re-rendering it gave different bytes; restore it from the team remote "
                    "(dvc pull golden.dvc) or rebuild it on purpose with `lightbox golden --rebuild`"
                )
    version = dvc_repo.version_path(settings, settings.golden_subdir)
    n_images = sum(1 for _ in (settings.golden_dir / IMAGES_SUBDIR).iterdir())
    return GoldenResult(settings.golden_dir, n_images, settings.golden_sources, version)
