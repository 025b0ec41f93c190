"""The whole lifecycle through Airflow on a small dataset with the real frameworks, then the server,
on the embedded defaults (SQLite, local folders, local Ray).

One module-scoped run (about two minutes on 2 cores); each test checks one promise of the skeleton.
The checks live in tests/lifecycle.py: the production profile (tests/services) runs the same ones.
"""

from __future__ import annotations

import pytest
from lifecycle import LENIENT_GATES, LifecycleChecks, free_port, run_lifecycle

from lightbox.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(
        project_dir=tmp_path_factory.mktemp("project"),
        serve_port=free_port(),
        **LENIENT_GATES,  # type: ignore[arg-type]
    )
    return run_lifecycle(settings)


class TestEmbeddedProfile(LifecycleChecks):
    pass
