"""Behavioural model tests on golden-set predictions: invariance, direction, minimum functionality.

Pure pandas/numpy on a predictions table, so each rule is unit-tested without a model. The table has
one row per golden image: ``group`` (the source scene), ``kind`` ("none" when pristine), ``level`` (0
when pristine), ``score`` (predicted, normalised to [0, 1] by the model's score range) and one
``p:<tag>`` column per tag probability. The direction and minimum-functionality rules need the
synthetic golden set's distortion grid; invariance and "blur lowers the score" fit any golden set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lightbox.dataset import DEFECT_TAG

# "Stronger blur, noise or exposure error lowers the score": the kinds whose direction is checked.
DIRECTION_KINDS: tuple[str, ...] = ("blur", "noise", "overexposed", "underexposed")
PRISTINE = "none"


@dataclass(frozen=True)
class BehaviourResult:
    """One behavioural test: its headline number and a line per failing case (for the report)."""

    name: str
    value: float
    cases: int
    failures: list[str] = field(default_factory=list)


def parse_distortions(text: str) -> tuple[str, int]:
    """Manifest ``distortions`` of a golden image ("none" or "blur:3") -> (kind, level)."""
    if text == PRISTINE:
        return PRISTINE, 0
    parts = text.split("+")
    if len(parts) != 1:
        raise ValueError(f"golden images carry one distortion each, got {text!r}")
    kind, level = parts[0].split(":")
    return kind, int(level)


def invariance(
    base: np.ndarray, moved: Mapping[str, np.ndarray], ids: Sequence[str], epsilon: float
) -> BehaviourResult:
    """Largest |score change| under label-preserving transforms (resize, high-quality JPEG re-encode)."""
    base = np.asarray(base, dtype=np.float64)
    worst = 0.0
    failures, cases = [], 0
    for transform, scores in moved.items():
        delta = np.abs(np.asarray(scores, dtype=np.float64) - base)
        if delta.shape != base.shape:
            raise ValueError(f"{transform}: {delta.shape[0]} scores for {base.shape[0]} images")
        cases += len(delta)
        worst = max(worst, float(delta.max(initial=0.0)))
        failures += [
            f"{ids[int(i)]} {transform}: moved {delta[i]:.3f}" for i in np.flatnonzero(delta > epsilon)
        ]
    return BehaviourResult("invariance_max_delta", worst, cases, failures)


def direction(
    preds: pd.DataFrame, slack: float, min_drop: float, kinds: Sequence[str] = DIRECTION_KINDS
) -> BehaviourResult:
    """Share of (source, kind) ladders pristine -> level 1..5 whose score never rises by more than
    ``slack`` between steps and falls by at least ``min_drop`` overall (a flat model fails)."""
    failures, passed, cases = [], 0, 0
    for source_id, group in preds.groupby("group", sort=True):  # a group is one source scene
        pristine = group[group["kind"] == PRISTINE]["score"]
        if len(pristine) != 1:
            raise ValueError(f"{source_id}: expected one pristine image, found {len(pristine)}")
        for kind in kinds:
            ladder = group[group["kind"] == kind].sort_values("level")
            scores = np.concatenate([[float(pristine.iloc[0])], ladder["score"].to_numpy(np.float64)])
            cases += 1
            rises = np.diff(scores)
            bad_steps = [int(lvl) for lvl, d in zip(ladder["level"], rises, strict=True) if d > slack]
            drop = scores[0] - scores[-1]
            if len(ladder) == 0:
                failures.append(f"{source_id} {kind}: no graded images")
            elif bad_steps or drop < min_drop:
                why = f"rises at level {bad_steps}" if bad_steps else f"drops only {drop:.3f}"
                failures.append(f"{source_id} {kind}: {why} ({', '.join(f'{s:.2f}' for s in scores)})")
            else:
                passed += 1
    return BehaviourResult("direction_pass_rate", passed / cases if cases else 0.0, cases, failures)


def lowers_score(
    base: np.ndarray, moved: np.ndarray, ids: Sequence[str], min_drop: float, name: str = "blur"
) -> BehaviourResult:
    """Share of images whose score falls by at least ``min_drop`` under a damaging transform (a strong
    blur): the one direction rule any scored golden set supports, with no distortion grid."""
    base = np.asarray(base, dtype=np.float64)
    moved = np.asarray(moved, dtype=np.float64)
    if moved.shape != base.shape:
        raise ValueError(f"{name}: {moved.shape[0]} scores for {base.shape[0]} images")
    drop = base - moved
    failures = [f"{ids[int(i)]}: {name} drops only {drop[i]:.3f}" for i in np.flatnonzero(drop < min_drop)]
    cases = len(base)
    value = (cases - len(failures)) / cases if cases else 0.0
    return BehaviourResult(f"{name}_lowers_score_pass_rate", value, cases, failures)


def minimum_functionality(preds: pd.DataFrame, threshold: float) -> BehaviourResult:
    """Pristine images carry no defect tag; each kind's strongest level carries its own tag."""
    failures, passed, cases = [], 0, 0
    defect_cols = {kind: f"p:{tag}" for kind, tag in DEFECT_TAG.items()}
    missing = sorted(c for c in defect_cols.values() if c not in preds.columns)
    if missing:
        raise ValueError(f"predictions lack defect tag columns {missing}")
    # Records, not itertuples: "p:<tag>" is no identifier, so namedtuples would rename those fields.
    for row in preds[preds["kind"] == PRISTINE].to_dict("records"):
        cases += 1
        fired = [col[2:] for col in defect_cols.values() if row[col] >= threshold]
        if fired:
            failures.append(f"{row['group']} pristine: tagged {fired}")
        else:
            passed += 1
    strongest = preds[preds["kind"].isin(list(defect_cols))]
    strongest = strongest[strongest["level"] == strongest.groupby("kind")["level"].transform("max")]
    for row in strongest.to_dict("records"):
        cases += 1
        col = defect_cols[row["kind"]]
        prob = float(row[col])
        if prob < threshold:
            where = f"{row['group']} {row['kind']}:{row['level']}"
            failures.append(f"{where}: {col[2:]} at {prob:.2f} < {threshold}")
        else:
            passed += 1
    return BehaviourResult("min_functionality_pass_rate", passed / cases if cases else 0.0, cases, failures)
