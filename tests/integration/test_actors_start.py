"""A job whose one-actor-per-node pool does not start in time stops with one line (ActorsDidNotStart,
a known error) instead of hanging, and Ray Data's setting is left as it was."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from lightbox.cli import known_error
from lightbox.ray_cluster import ray_session
from lightbox.settings import Settings
from pipelines import score_catalog
from pipelines.score_catalog import ActorsDidNotStart, Layout

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class _SlowModel:
    """Loads for longer than the job waits."""

    def __init__(self) -> None:
        time.sleep(30)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover
        return {"uri": batch["uri"]}


def test_actors_that_do_not_start_in_time_stop_the_job_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers do not import tests/
    monkeypatch.setattr(score_catalog, "ACTORS_START_S", 2)
    settings = Settings(project_dir=tmp_path, ray_num_cpus=2)
    layout = Layout(actors=2, use_gpu=False, decode_in_actor=True, threads=1, wait_for_actors=True, calls=2)
    with ray_session(settings):
        before = ray.data.DataContext.get_current().wait_for_min_actors_s
        with pytest.raises(ActorsDidNotStart) as err:
            list(score_catalog.image_pipeline(settings, ["a.jpg"] * 4, _SlowModel, {}, layout=layout))
        assert ray.data.DataContext.get_current().wait_for_min_actors_s == before
    line, code = known_error(err.value) or ("", 0)
    assert code == 1 and "did not all start within 2 s" in line and "LIGHTBOX_SCORE_ACTORS" in line
