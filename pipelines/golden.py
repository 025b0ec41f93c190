"""Stage: the frozen golden set the promotion gates judge every model on.

Never trained or tuned on: it lives in its own folder (``settings.golden_dir``, tracked by its own
``golden.dvc``), in the same format as a dataset (lightbox.manifest: ``images/``, ``manifest.csv``
with split "golden", ``labels.json``). Where it comes from depends on the dataset:

- an imported dataset: the first import sets a share of its groups aside (``golden_fraction``), or
  ``--golden SOURCE`` imports held-out photos. This stage only freezes it: versions it with DVC, or
  restores it from DVC; it never invents one from the user's data.
- the synthetic demo dataset: rendered here, from a seed stream the training sources never draw from
  (``SeedSequence([golden_seed, GOLDEN_STREAM, i])``; training uses stream 0). Each source appears
  pristine and with every distortion kind at every level (the ``distortions`` column), so the
  direction and minimum-functionality checks have a full grid to read. Small on purpose (31 images
  per source, 93 by default): the gates run on every promotion.

Frozen either way: an existing golden set is never silently replaced, because changing it changes
every comparison against the champion.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lightbox import distortions, photos
from lightbox.adapters import dvc_repo
from lightbox.adapters.dvc_repo import DatasetVersion
from lightbox.dataset import Distortion, procedural_scene, score_for, tags_for
from lightbox.manifest import (
    GOLDEN_SPLIT,
    IMAGES_SUBDIR,
    MANIFEST_NAME,
    LabelSpec,
    ManifestError,
    count_tags,
    format_score,
    read_label_spec,
    read_manifest,
    tags_to_cell,
    write_label_spec,
    write_manifest,
)
from lightbox.settings import Settings
from pipelines.data import SOURCE_FORMAT as SYNTHETIC_FORMAT
from pipelines.data import _child_seed, render, swap_in
from pipelines.importer import building_dir, remove_stale_builds

GOLDEN_STREAM = 9_001  # SeedSequence path element: training sources use 0, variants 1


class GoldenSetMissing(RuntimeError):
    """An imported dataset has no golden set, and this stage cannot make one (the message says how)."""


@dataclass(frozen=True)
class GoldenResult:
    golden_dir: Path
    n_images: int
    n_groups: int
    rendered: bool  # True: the synthetic grid, rendered here; False: set aside at import
    version: DatasetVersion


def plan_grid() -> list[list[Distortion]]:
    """Pristine first, then every (kind, level): the full grid the behavioural checks read."""
    return [[]] + [[(kind, level)] for kind in distortions.KINDS for level in distortions.LEVELS]


def _row(
    data: bytes, group: str, plan: list[Distortion], content: list[str], settings: Settings
) -> dict[str, str]:
    # Described exactly as the importer describes a photo: content-hash id, upright size, pHash.
    info = photos.inspect(data, max_pixels=settings.max_pixels, min_side=settings.min_image_side)
    label = "-".join(f"{k}-{lvl}" for k, lvl in plan) or "pristine"
    return {
        "image_id": info.image_id,
        "path": f"{IMAGES_SUBDIR}/{info.image_id}{info.ext}",
        "split": GOLDEN_SPLIT,
        "group": group,
        "score": format_score(score_for(plan)),
        "tags": tags_to_cell(tags_for(plan, content)),
        "width": str(info.width),
        "height": str(info.height),
        "phash": info.phash,
        "original": f"{group}-{label}",
        "distortions": "+".join(f"{k}:{lvl}" for k, lvl in plan) or "none",
    }


def _render_grid(settings: Settings, root: Path) -> list[dict[str, str]]:
    rows = []
    for i in range(settings.golden_sources):
        group = f"golden-{i:03d}"
        img, content = procedural_scene(
            _child_seed(settings.golden_seed, GOLDEN_STREAM, i), settings.image_max_side
        )
        rng = np.random.default_rng(_child_seed(settings.golden_seed, GOLDEN_STREAM + 1, i))
        for plan in plan_grid():
            data, _ = render(img, plan, rng)
            row = _row(data, group, plan, content, settings)
            if (root / row["path"]).exists():
                raise RuntimeError(f"two golden images render to the same bytes ({row['original']})")
            (root / row["path"]).write_bytes(data)
            rows.append(row)
    return rows


def build(settings: Settings, spec: LabelSpec) -> tuple[Path, int]:
    """Render the synthetic golden grid into settings.golden_dir (atomically replaced). Its labels.json
    is the dataset's spec (same tags, same score scale) with the golden set's own tag counts, as the
    importer writes a golden slice. Same settings, same bytes."""
    target = settings.golden_dir
    remove_stale_builds(target)  # what a killed render left; the pid in the name tells it from a live one
    tmp = building_dir(target)
    try:
        (tmp / IMAGES_SUBDIR).mkdir()
        rows = _render_grid(settings, tmp)
        write_manifest(tmp, rows)
        write_label_spec(tmp, replace(spec, tag_counts=count_tags(rows)))
        os.chmod(tmp, 0o755)
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target, len(rows)


def _synthetic_spec_or_explain(settings: Settings, *, rebuild: bool, tracked: str | None) -> LabelSpec:
    """The dataset's label spec when it is the synthetic set (whose golden grid this stage renders);
    GoldenSetMissing for an imported dataset, whose golden set only an import can make."""
    spec = read_label_spec(settings.data_dir)
    if spec.source_format == SYNTHETIC_FORMAT:
        return spec
    if rebuild:
        raise GoldenSetMissing(
            f"`--rebuild` re-renders only the synthetic demo's golden grid; the golden set of the imported "
            f"dataset in {settings.data_dir} comes from the import and stays frozen (to replace it on "
            "purpose, delete it and import held-out photos with `lightbox data import SOURCE --golden "
            "GOLDEN_SOURCE`)"
        )
    if tracked:
        raise GoldenSetMissing(
            f"{settings.golden_subdir}.dvc tracks the golden set {tracked}, but neither the DVC cache nor "
            "the remote holds it: restore it from the team remote (`dvc pull golden.dvc` with that remote "
            "configured), or import held-out photos with `lightbox data import SOURCE --golden GOLDEN_SOURCE`"
        )
    raise GoldenSetMissing(
        f"no golden set at {settings.golden_dir} for the imported dataset in {settings.data_dir}: "
        "import held-out photos with `lightbox data import SOURCE --golden GOLDEN_SOURCE`, or import "
        "into an empty project with golden_fraction > 0 (LIGHTBOX_GOLDEN_FRACTION) so the first "
        "import sets a share aside"
    )


def run(settings: Settings, *, rebuild: bool = False) -> GoldenResult:
    """Freeze the golden set: version what is there with DVC, restore it from DVC when tracked but
    absent, or (synthetic dataset only) render it. Re-runnable.

    ``rebuild`` re-renders the synthetic grid on purpose (the day its definition changes); an imported
    golden set is never rebuilt here.
    """
    present = (settings.golden_dir / MANIFEST_NAME).is_file()
    rendered = False
    if rebuild or not present:
        tracked = None if rebuild else dvc_repo.tracked_md5(settings, settings.golden_subdir)
        # Tracked but not checked out (a fresh clone): restore the frozen bytes. With nothing to restore
        # from (an empty local remote), re-render the synthetic grid: the build is deterministic, and
        # the hash check below refuses any golden set that is not byte-for-byte the frozen one.
        if not (tracked and dvc_repo.restore_path(settings, settings.golden_subdir)):
            spec = _synthetic_spec_or_explain(settings, rebuild=rebuild, tracked=tracked)
            build(settings, spec)
            rendered = True
            if tracked and not dvc_repo.matches_tracked(settings, settings.golden_subdir):
                raise RuntimeError(
                    f"the golden set is tracked as {tracked} but is not in the DVC remote, and "
                    "re-rendering it gave different bytes; restore it from the team remote "
                    "(dvc pull golden.dvc) or rebuild it on purpose with `lightbox golden --rebuild`"
                )
    try:
        rows = read_manifest(settings.golden_dir)
    except ManifestError as exc:  # say what to do about a golden folder, not about a dataset import
        raise GoldenSetMissing(
            f"{settings.golden_dir} is no golden set in the manifest format ({exc}); the synthetic demo's "
            "is re-rendered with `lightbox golden --rebuild`, an imported dataset's comes from "
            "`lightbox data import SOURCE --golden GOLDEN_SOURCE`"
        ) from None
    version = dvc_repo.version_path(settings, settings.golden_subdir)
    return GoldenResult(settings.golden_dir, len(rows), len({r["group"] for r in rows}), rendered, version)
