"""The end-to-end lifecycle both profiles must pass: the same DAG runs and the same assertions.

``tests/integration/test_end_to_end.py`` runs it on the embedded defaults (SQLite, folders, local
Ray); ``tests/services/test_end_to_end_production.py`` on PostgreSQL, Redis, S3 and an MLflow server
with basic auth. Each provides a module-scoped ``project`` fixture (its Settings, after
``run_lifecycle``) and subclasses ``LifecycleChecks``; nothing here knows which profile it runs on,
which is the point: the production profile changes settings, not code paths.
"""

from __future__ import annotations

import io
import socket

import httpx
import pandas as pd

from lightbox import manifest
from lightbox.adapters import airflow_runner, dvc_repo, feast_store, mlflow_registry
from lightbox.demo import pick_images, start_server
from lightbox.settings import CODE_ROOT, Settings

# A small dataset learns less than the demo's; the gates' own behaviour is unit-tested.
LENIENT_GATES: dict[str, object] = dict(
    gate_min_srocc=0.2,
    gate_max_mae=0.35,
    gate_min_map=0.2,
    # The golden-set and behavioural gates run too (lightbox_train promotes through them); a model
    # from 10 sources is judged leniently here, test_promotion_cli covers pass and fail.
    golden_sources=1,
    gate_golden_min_srocc=0.2,
    # The golden scenes are far from a 14-source training set: MAE came out 0.31-0.39 across runs.
    gate_golden_max_mae=0.5,
    gate_golden_min_map=0.2,
    gate_golden_min_tag_ap=0.0,
    gate_golden_max_ece=0.5,
    gate_invariance_epsilon=0.25,
    gate_direction_min_pass_rate=0.0,
    gate_min_functionality_pass_rate=0.0,
    # The serving-latency gate measures this machine; tests share 2 cores with other work (a 3.2 s batch
    # of 8 failed it once under load). Its pass/fail logic is covered by the unit and promotion tests.
    gate_max_batch_latency_ms=15_000.0,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_lifecycle(settings: Settings, data_conf: dict | None = None) -> Settings:
    """Both DAGs through Airflow (`airflow dags test`) on a small dataset: the synthetic demo set, or
    the user's photos that ``data_conf`` names (the lightbox_data params)."""
    airflow_runner.dags_test(settings, "lightbox_data", data_conf or {"n_sources": 14, "variants": 6})
    airflow_runner.dags_test(settings, "lightbox_train", {"trials": 4, "epochs": 20})
    return settings


class LifecycleChecks:
    """One promise of the skeleton per test; ``project`` is the subclass module's fixture."""

    def test_dvc_remote_holds_the_version_and_it_reads_back(self, project: Settings) -> None:
        version = dvc_repo.load_version(project)
        assert version.md5.endswith(".dir") and len(version.git_rev) == 40
        assert dvc_repo.remote_holds(project, version)
        old = dvc_repo.read_file_at(project, "manifest.csv", version.git_rev)
        assert old == (project.data_dir / "manifest.csv").read_bytes()
        assert len(pd.read_csv(io.BytesIO(old))) == version.files - 2  # every image + manifest + labels

    def test_feast_serves_the_features_online(self, project: Settings) -> None:
        ids = [r["image_id"] for r in manifest.read_manifest(project.data_dir)][:3]
        online = feast_store.online(project, ids)
        assert online["image_id"] == ids
        assert all(e is not None and len(e) == 1280 for e in online["embedding"])
        assert all(0.0 <= b <= 1.0 for b in online["brightness"])

    def test_mlflow_has_the_tuned_runs_and_a_champion(self, project: Settings) -> None:
        client = mlflow_registry.client(project)
        champion = mlflow_registry.version_by_alias(project, project.champion_alias)
        parent = client.get_run(champion.run_id)
        version = dvc_repo.load_version(project)
        assert parent.data.tags["data.md5"] == version.md5
        assert parent.data.tags["feature_service"] == project.feature_service
        # The code that trained, not the data project's own git history.
        assert parent.data.tags["code.revision"] == dvc_repo.head_revision(CODE_ROOT)
        assert {
            "test_score_srocc",
            "test_score_plcc",
            "test_score_mae",
            "test_tags_map",
            "test_tags_micro_f1",
        } <= set(parent.data.metrics)
        trials = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        assert len(trials) >= 4
        for t in trials:  # each trial run spans its own Ray trial and records the epochs it really ran
            assert t.info.start_time < t.info.end_time
            assert int(t.data.params["epochs"]) <= int(t.data.params["epochs_planned"])
            assert "val_loss" in t.data.metrics and "train_loss" in t.data.metrics
        assert 1 <= int(parent.data.params["best_epoch"]) <= int(parent.data.params["epochs"])
        assert champion.tags["gate.passed"] == "true"
        assert champion.tags["gate.golden_md5"] == dvc_repo.tracked_md5(project, project.golden_subdir)
        assert champion.tags["promotion.by"] == "airflow:lightbox_train"
        plots = {"plots/tags_pr_curves.png", "plots/tags_calibration.png", "plots/score_pred_vs_true.png"}
        if manifest.read_label_spec(project.data_dir).source_format == "synthetic":
            plots.add("plots/srocc_per_distortion.png")
        assert plots <= {f.path for f in client.list_artifacts(parent.info.run_id, "plots")}
        assert parent.inputs.dataset_inputs[0].dataset.digest == version.short

    def test_runs_by_hand_leave_no_asset_triggered_runs_queued(self, project: Settings) -> None:
        """lightbox_train and lightbox_score_catalog are unpaused from creation (the UI flow chains), so
        the features and champion events of these `dags test` runs queued runs of them: a scheduler
        started later on this home would have trained and rescored again by itself. None are left."""
        from sqlalchemy import create_engine, text

        engine = create_engine(airflow_runner.airflow_env(project)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        try:
            with engine.connect() as conn:
                paused = dict(conn.execute(text("SELECT dag_id, is_paused FROM dag")).all())
                queued = conn.execute(text("SELECT count(*) FROM asset_dag_run_queue")).scalar()
        finally:
            engine.dispose()
        assert not paused["lightbox_train"], paused
        assert queued == 0

    def test_server_answers_with_the_datasets_tags_on_its_scale(self, project: Settings) -> None:
        spec = manifest.read_label_spec(project.data_dir)
        synthetic = spec.source_format == "synthetic"
        server = start_server(project, project.state / "logs" / "serve-test.log")
        try:
            base = f"http://{project.serve_host}:{project.serve_port}"
            rows = manifest.read_manifest(project.data_dir)
            paths = (
                pick_images(project) if synthetic else tuple(project.data_dir / r["path"] for r in rows[:2])
            )
            answers = []
            for path in paths:
                r = httpx.post(f"{base}/predict", files={"file": (path.name, path.read_bytes())}, timeout=60)
                assert r.status_code == 200, r.text
                answers.append(r.json())
            champion = mlflow_registry.version_by_alias(project, project.champion_alias)
            assert spec.score_range is not None
            low, high = spec.score_range
            for a in answers:
                assert low <= a["score"] <= high
                assert (a["model"]["name"], a["model"]["version"]) == (
                    project.model_name,
                    str(champion.version),
                )
                assert a["model"]["score_range"] == [low, high]
                assert all({"name", "confidence"} <= set(t) for t in a["tags"])
                # Issue 11: the runtime the gates verified and measured fastest on this CPU serves it.
                fastest = champion.tags[mlflow_registry.RUNTIME_CPU_TAG].split(" ")[0]
                assert champion.tags[mlflow_registry.RUNTIME_ONNX_TAG].startswith("verified")
                assert a["model"]["runtime"] == ("onnxruntime" if fastest == "onnxruntime" else "torchscript")
            everything = httpx.post(
                f"{base}/predict?threshold=0",
                files={"file": (paths[0].name, paths[0].read_bytes())},
                timeout=60,
            ).json()
            assert sorted(t["name"] for t in everything["tags"]) == sorted(spec.tags)
            meta = httpx.get(f"{base}/v2/models/{project.model_name}", timeout=30).json()
            assert meta["parameters"]["tag_names"] == list(spec.tags)
            assert list(meta["parameters"]["score_range"]) == [low, high]
            if synthetic:
                assert answers[1]["score"] < answers[0]["score"]  # the blurred variant scores lower
            bad = httpx.post(
                f"{base}/predict", content=b"not an image", headers={"content-type": "image/jpeg"}
            )
            assert 400 <= bad.status_code < 500 and "error" in bad.json()
        finally:
            server.terminate()
            server.wait(timeout=30)
