"""stdout holds a command's result only: what runs inside `stdout_to_stderr` (Python, threads, child
processes, raw fd writes) lands on stderr; `lightbox settings` shows the effective locations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lightbox.adapters.mlflow_registry import _ranges
from lightbox.cli import app

REPO = Path(__file__).resolve().parents[2]

# Every way Ray Tune's progress reaches stdout: print, a thread, a child process inheriting fd 1, C code.
_SCRIPT = """
import os, subprocess, sys, threading
from lightbox.stdio import stdout_to_stderr
print("before", flush=True)
with stdout_to_stderr():
    print("from print")
    t = threading.Thread(target=print, args=("from a thread",)); t.start(); t.join()
    subprocess.run([sys.executable, "-c", "print('from a child process')"], check=True)
    os.write(1, b"from fd 1\\n")
    print("unflushed", end="")
print("after")
"""


def test_what_runs_inside_goes_to_stderr_and_stdout_is_restored() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, cwd=REPO, check=True
    )
    assert result.stdout == "before\nafter\n"
    for line in ("from print", "from a thread", "from a child process", "from fd 1", "unflushed"):
        assert line in result.stderr


def test_settings_show_the_effective_locations(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["settings"], env={"LIGHTBOX_PROJECT_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["mlflow_tracking_uri"] is None  # the raw setting, unset
    effective = shown["effective"]
    assert effective["mlflow_tracking_uri"] == f"sqlite:///{tmp_path}/.lightbox/mlflow.db"
    assert effective["mlflow_artifact_root"] == f"{tmp_path}/.lightbox/mlartifacts"
    assert effective["dvc_remote"] == f"{tmp_path}/.lightbox/dvc-remote"
    assert effective["feast_registry"] == f"{tmp_path}/.lightbox/feast/registry.db"
    assert effective["airflow_home"] == f"{tmp_path}/.lightbox/airflow"


def test_settings_mask_passwords_in_effective_values(tmp_path: Path) -> None:
    env = {
        "LIGHTBOX_PROJECT_DIR": str(tmp_path),
        "LIGHTBOX_MLFLOW_TRACKING_URI": "postgresql://lb:s3cret@db:5432/mlflow",
    }
    result = CliRunner().invoke(app, ["settings"], env=env)
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.stdout
    assert (
        json.loads(result.stdout)["effective"]["mlflow_tracking_uri"] == "postgresql://lb:***@db:5432/mlflow"
    )


def test_version_lists_fit_one_line() -> None:
    assert _ranges([1]) == "1"
    assert _ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"


def test_demo_refuses_a_project_holding_imported_photos(tmp_path: Path) -> None:
    """`lightbox demo` renders its synthetic set into data/ and golden/: in a project that holds the
    user's imported photos it stops with one line naming a folder of its own, before any DAG runs."""
    from lightbox.manifest import LabelSpec, write_label_spec
    from lightbox.settings import Settings

    settings = Settings(project_dir=tmp_path)
    env = {"LIGHTBOX_PROJECT_DIR": str(tmp_path)}
    for folder in (settings.golden_dir, settings.data_dir):
        folder.mkdir(parents=True, exist_ok=True)
        write_label_spec(folder, LabelSpec(tag_counts={"cat": 9}, source_format="labelstudio"))
        result = CliRunner().invoke(app, ["demo"], env=env)
        assert result.exit_code == 1, result.output
        assert "holds your imported photos (labelstudio)" in result.output
        assert "LIGHTBOX_PROJECT_DIR=/tmp/lightbox-demo lightbox demo" in result.output
        assert "Traceback" not in result.output
    from pipelines.data import users_photos

    for folder in (settings.golden_dir, settings.data_dir):  # the demo's own set: it may run again
        write_label_spec(folder, LabelSpec(tag_counts={"cat": 9}, source_format="synthetic"))
    assert users_photos(settings) is None


def test_an_empty_source_does_not_replace_the_users_photos(tmp_path: Path) -> None:
    """The lightbox_data DAG without a source renders the demo set: a `source` left empty in the UI's
    trigger form (or misspelled) had replaced 58 imported photos with 12 synthetic ones, committed as a
    new DVC version, and the run reported success. Now refused before anything is rendered, as is
    `lightbox data build` in such a project; an import option without a source is refused too."""
    from lightbox.manifest import LabelSpec, read_label_spec, write_label_spec
    from lightbox.settings import Settings
    from pipelines import data, importer, ingest

    settings = Settings(project_dir=tmp_path)
    settings.data_dir.mkdir(parents=True)
    write_label_spec(settings.data_dir, LabelSpec(tag_counts={"cat": 9}, source_format="imagefolder"))
    for params in ({"source": ""}, {"source": None, "n_sources": 3, "variants": 1}, {}):
        with pytest.raises(data.DemoSetRefused, match=r"holds your imported photos \(imagefolder\)"):
            ingest.run(settings, params)
    assert read_label_spec(settings.data_dir).source_format == "imagefolder"  # untouched
    with pytest.raises(importer.ImportFailed, match="score_column given without a source"):
        ingest.run(settings, {"source": "", "score_column": "stars"})
    result = CliRunner().invoke(app, ["data", "build"], env={"LIGHTBOX_PROJECT_DIR": str(tmp_path)})
    assert result.exit_code == 1, result.output
    assert "holds your imported photos" in result.output and "Traceback" not in result.output
