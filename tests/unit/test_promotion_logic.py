from pathlib import Path

import pandas as pd
import pytest

from lightbox.settings import Settings
from pipelines import golden
from pipelines.data import MANIFEST_NAME
from pipelines.lineage import Lineage, format_lineage, parse_model_uri
from pipelines.promote import previous_alias_for


def test_previous_alias(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path)
    assert previous_alias_for("champion", s) == "previous"
    assert previous_alias_for("staging", s) == "staging-previous"


def test_parse_model_uri() -> None:
    assert parse_model_uri("models:/lightbox/3") == ("lightbox", "3", None)
    assert parse_model_uri("models:/lightbox@champion") == ("lightbox", None, "champion")
    with pytest.raises(ValueError, match="models:/NAME/VERSION"):
        parse_model_uri("runs:/abc/model")


def test_format_lineage_names_every_link() -> None:
    text = format_lineage(
        Lineage(
            "lightbox", "3", ["champion"], "run1", "tune-abc", "1", "abc.dir", "f" * 40,
            "dvc://data@fff#md5=abc.dir", "lightbox-data-abc", "abc", "image_quality_v1", "e" * 40,
            "true", "ci",
        )
    )  # fmt: skip
    lines = text.splitlines()
    assert lines[0].startswith("model     models:/lightbox/3 (@champion)")
    assert "run1" in lines[1] and "abc.dir" in lines[2] and "f" * 40 in lines[2]
    assert "image_quality_v1" in lines[4] and "e" * 40 in lines[5]


def test_golden_set_is_a_full_grid_disjoint_from_training_and_deterministic(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path, golden_sources=2, image_max_side=96)
    golden.build(s)
    m = pd.read_csv(s.golden_dir / MANIFEST_NAME, dtype=str, keep_default_na=False)
    assert len(m) == 2 * 31 and (m["split"] == "golden").all()
    assert m["source_id"].str.startswith("golden-").all()
    per_source = m.groupby("source_id")["distortions"].apply(set)
    assert all(len(d) == 31 and "none" in d and "blur:5" in d for d in per_source)
    pristine = m[m["distortions"] == "none"]
    assert (pristine["score"].astype(float) == 1.0).all()
    assert m[m["distortions"] == "noise:5"]["tags"].str.contains("noisy").all()
    first = {p: (s.golden_dir / p).read_bytes() for p in m["path"]}
    golden.build(s)
    assert all((s.golden_dir / p).read_bytes() == b for p, b in first.items())
    # A different seed stream from training: the first golden scene differs from training scene 0.
    from lightbox.dataset import procedural_scene
    from pipelines.data import _child_seed

    train0 = procedural_scene(_child_seed(s.dataset_seed, 0, 0), 96)[0]
    gold0 = procedural_scene(_child_seed(s.golden_seed, golden.GOLDEN_STREAM, 0), 96)[0]
    assert train0.tobytes() != gold0.tobytes()
