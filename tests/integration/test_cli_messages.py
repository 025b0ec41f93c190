"""Known errors are one red line on stderr with what to do and a non-zero exit, not a traceback; with
`lightbox --debug` the traceback comes first. Each command runs as a user runs it: `python -m lightbox.cli`
in a subprocess, LIGHTBOX_PROJECT_DIR pointing at a project whose registry is real MLflow on SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lightbox.settings import ENV_PREFIX, Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]  # parts of the one line
    project: bool = True  # False: run from an empty folder with no LIGHTBOX_PROJECT_DIR
    env: tuple[tuple[str, str], ...] = ()


CASES = {
    "serve without a champion": Case(
        ("serve",),
        1,
        ("has been promoted yet (versions 1-2)", "lightbox promote --version 2", "lightbox_train"),
    ),
    "promote before the golden set": Case(
        ("promote", "--version", "1"), 1, ("no golden set at", "run `lightbox golden` first")
    ),
    "promote an unknown version": Case(
        ("promote", "--version", "99"), 1, ("models:/lightbox/99 does not exist: versions registered: 1-2",)
    ),
    "a version past any integer": Case(
        ("gates", "--version", "99999999999999999999"),
        1,
        ("models:/lightbox/99999999999999999999 does not exist: versions registered: 1-2",),
    ),
    "promote to an alias MLflow reserves": Case(
        ("promote", "--version", "1", "--alias", "latest", "--dry-run"),
        2,
        ("alias 'latest' is reserved by MLflow", "choose another name"),
    ),
    "alias settings that collide": Case(
        ("promote", "--version", "1"),
        2,
        ("champion_alias and previous_alias are both 'champion'",),
        env=(("LIGHTBOX_PREVIOUS_ALIAS", "champion"),),
    ),
    "lineage of an unknown version": Case(
        ("lineage", "models:/lightbox/99"), 1, ("models:/lightbox/99 does not exist", "registered: 1-2")
    ),
    "serve from the wrong folder": Case(
        ("serve",),
        2,
        ("nothing trained yet in", "lightbox data import SOURCE", "LIGHTBOX_PROJECT_DIR"),
        project=False,
    ),
    "serve a model name that is not registered": Case(
        ("serve",),
        1,
        # serve has no --model: its hint names --models (the one it has).
        (
            "no model named 'lightbx' (registered models: lightbox)",
            "LIGHTBOX_MODEL_NAME",
            "serve --models NAME@",
        ),
        env=(("LIGHTBOX_MODEL_NAME", "lightbx"),),
    ),
    "a typo in a DAG's param": Case(
        ("dags", "test", "lightbox_data", "--conf", '{"sorce": "/photos"}'),
        2,
        ("lightbox_data has no param sorce (did you mean source?)",),
    ),
    "import from a folder that is not there": Case(
        ("data", "import", "/nonexistent/photos"),
        1,
        ("import failed: /nonexistent/photos is neither a folder nor a file",),
    ),
    "a version that is not a number": Case(("gates", "--version", "abc"), 2, ("must be an integer",)),
    "train before any import": Case(("train",), 1, ("no dataset version yet", "lightbox data import SOURCE")),
    "a rejected setting": Case(
        ("settings",),
        2,
        ("LIGHTBOX_GATE_MIN_SROCC=-5: must be >= -1",),
        env=(("LIGHTBOX_GATE_MIN_SROCC", "-5"),),
    ),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose registry holds versions 1 and 2 of `lightbox` (each from a run), no alias and no
    golden set: every message above, from one registry built once."""
    import mlflow
    from lightbox.adapters import mlflow_registry

    root = tmp_path_factory.mktemp("project")
    settings = Settings(project_dir=root)
    settings.state.mkdir(parents=True)
    mlflow_registry.configure(settings)  # creates the project's default SQLite registry
    client = mlflow_registry.client(settings)
    client.create_registered_model(settings.model_name)
    for _ in range(2):
        with mlflow.start_run() as run:
            client.create_model_version(
                settings.model_name, source=str(settings.state / "no-model"), run_id=run.info.run_id
            )
    return root


def _cli(case: Case, project: Path, elsewhere: Path, debug: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env |= dict(case.env) | {"PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    if case.project:
        env["LIGHTBOX_PROJECT_DIR"] = str(project)
    args = ("--debug", *case.args) if debug else case.args
    return subprocess.run(
        [sys.executable, "-m", "lightbox.cli", *args],
        cwd=project if case.project else elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _lines(stderr: str) -> list[str]:
    # MLflow logs its own INFO lines (creating tables, downloads) through logging; they are not ours.
    return [line for line in stderr.splitlines() if line.strip() and " INFO mlflow" not in line]


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("name", list(CASES))
def test_a_known_error_is_one_line(name: str, debug: bool, project: Path, tmp_path: Path) -> None:
    case = CASES[name]
    result = _cli(case, project, tmp_path, debug)
    assert result.returncode == case.code, result.stderr
    lines = _lines(result.stderr)
    if debug:
        assert "Traceback (most recent call last)" in result.stderr
    else:
        assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    for part in case.says:  # the one line is the last one either way
        assert part in lines[-1], lines[-1]
    assert result.stdout == ""
    # Nothing was created to read from: not a registry in the wrong folder, not state in the project.
    assert list(tmp_path.iterdir()) == []
