"""The one settings object. Read from the environment (prefix ``LIGHTBOX_``) with embedded defaults.

Every default lives under one state folder (``.lightbox/``) so a fresh clone runs end to end with no
server; every URI can be replaced by configuration alone (PostgreSQL, Redis, S3, a Ray address).
Built once at each entry point (CLI command, DAG task, test) and passed down; nothing reads the
environment anywhere else.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lightbox.aliases import check_alias

# The checkout this code runs from: dags/ and features/ are code, found beside the packages.
CODE_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    # allow_inf_nan=False: `inf` passes every lower bound, and `nan` makes every later comparison False.
    model_config = SettingsConfigDict(
        env_prefix="LIGHTBOX_", extra="forbid", frozen=True, allow_inf_nan=False
    )

    # --- where things live -------------------------------------------------------------------
    project_dir: Path = Field(default_factory=Path.cwd, description="git + DVC repository root")
    state_dir: Path = Field(default=Path(".lightbox"), description="embedded state; relative to project_dir")

    # --- data ----------------------------------------------------------------------------------
    data_subdir: str = "data"  # tracked by <project_dir>/data.dvc
    dataset_sources: int = Field(default=40, ge=3, description="source images (photos + rendered scenes)")
    dataset_variants: int = Field(default=12, ge=1, description="distorted variants per source image")
    # Seeds: numpy refuses negative ones, so they fail here and not halfway through a run.
    dataset_seed: int = Field(default=7, ge=0)
    image_max_side: int = Field(default=320, ge=32, le=8192, description="longest side images are stored at")
    max_pixels: int = Field(default=40_000_000, ge=1, description="decompression-bomb guard")
    min_image_side: int = Field(default=16, ge=1, description="smaller images are quarantined")
    max_quarantine_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    # --- import (pipelines/importer.py): the user's labelled photos -> data/ -----------------------
    # Tags on fewer images than this are listed in the label spec and left out of training.
    min_tag_count: int = Field(default=5, ge=1, description="images a tag needs to be trained on")
    split_validation_fraction: float = Field(default=0.15, ge=0.0, le=0.5)
    split_test_fraction: float = Field(default=0.15, ge=0.0, le=0.5)
    split_seed: int = Field(default=7, ge=0)
    # Perceptual-hash Hamming distance (of 64 bits) under which two photos are near duplicates.
    near_duplicate_distance: int = Field(default=6, ge=0, le=32)
    # A near-duplicate pair across the source's own splits leaks test photos into training.
    fail_on_split_leak: bool = Field(default=True, description="fail validation on a cross-split leak")
    # Share of groups the first import sets aside as the frozen golden set (never trained on); 0: none.
    golden_fraction: float = Field(default=0.1, ge=0.0, le=0.5)
    import_workers: int | None = Field(default=None, ge=1, description="None: one per CPU core")
    dvc_remote_url: str | None = None  # default: <state>/dvc-remote; s3://bucket/prefix in production
    dvc_remote_endpoint_url: str | None = None
    data_git_commit: bool = Field(default=True, description="commit data.dvc so the version has a git rev")

    # --- MLflow --------------------------------------------------------------------------------
    mlflow_tracking_uri: str | None = None  # default: sqlite:///<state>/mlflow.db
    mlflow_artifact_root: str | None = None  # default: <state>/mlartifacts
    mlflow_experiment: str = "lightbox"
    model_name: str = "lightbox"
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"  # set on every newly registered candidate
    previous_alias: str = "previous"  # the champion before the last promotion; `lightbox rollback` target

    # --- Feast ---------------------------------------------------------------------------------
    feast_repo: Path | None = None  # default: the features/ repo beside this code
    feast_registry: str | None = None  # default: <state>/feast/registry.db
    feast_online_store_path: str | None = None  # default: <state>/feast/online.db
    feast_offline_dir: str | None = None  # default: <state>/feast/offline
    feature_service: str = "image_quality_v1"

    # --- Ray / training ------------------------------------------------------------------------
    ray_address: str | None = None  # None (or empty): a local Ray on the loopback address
    ray_num_cpus: int | None = Field(default=None, ge=1, description="None: every core")
    tune_trials: int = Field(default=4, ge=1)
    tune_epochs: int = Field(default=60, ge=1)
    tune_seed: int = Field(default=0, ge=0)
    use_gpu: bool | None = None  # None: use one when torch sees it
    # heads: Tune trains the two heads on the Feast features (fast). finetune: then fine-tunes the backbone
    # end to end from the images, starting from those heads (training/finetune.py; GPUs recommended).
    train_mode: Literal["heads", "finetune"] = "heads"
    finetune_trials: int = Field(default=4, ge=1, description="fine-tune trials (train_mode finetune)")
    finetune_epochs: int = Field(default=5, ge=1, description="most epochs per fine-tune trial")
    finetune_batch_size: int = Field(default=32, ge=1, le=4096, description="global batch per step")
    finetune_head_lr: float = Field(default=1e-4, gt=0.0, le=1.0, description="heads' rate when fine-tuning")
    # 1 per trial when a GPU is present; a fraction shares one; above 1 (whole) a trial runs data parallel
    # over that many GPUs (Ray Train TorchTrainer, docs/deploy.md).
    finetune_gpus_per_trial: float | None = Field(default=None, ge=0.0, le=64.0, description="None: 1 or 0")
    finetune_cpus_per_trial: int = Field(default=1, ge=1, description="CPUs a trial holds (its decoders too)")
    finetune_loader_workers: int | None = Field(default=None, ge=0, le=64, description="None: by device")
    # Each image is decoded once per trial and kept (training/decoded.py): this much in memory per trial
    # (and per data-parallel worker), the rest in an unlinked file under <state>/finetune-cache.
    finetune_cache_mb: int = Field(default=2048, ge=0, description="decoded images kept in memory per trial")
    # The augmentations that leave this dataset's labels true (training/augment.py refuses the others).
    augment_ops: tuple[Literal["hflip", "crop", "resize"], ...] = ("hflip", "crop")

    # --- bulk scoring (pipelines/score_catalog.py, `lightbox score`) ---------------------------------
    # None: each model actor measures its device at start and takes the batch with the best images/s
    # (serving.calibration); a bulk job wants throughput, not the server's latency.
    score_batch_size: int | None = Field(default=None, ge=1, le=4096, description="None: calibrated")
    score_actors: int | None = Field(
        default=None, ge=1, description="model actors; None: one per GPU, else 1"
    )
    # Intra-op threads (torch and ONNX Runtime) of each model actor on CPU. None: the node's CPUs shared
    # by the actors placed on it (pipelines/score_catalog.py, actor_threads, says why not Ray's one).
    score_actor_threads: int | None = Field(
        default=None, ge=1, le=256, description="threads per CPU model actor; None: node CPUs / actors"
    )
    # Where images are read and decoded: "tasks" (Ray tasks on every core, pixels to the model actors
    # through the object store), "actor" (inside each model actor, on its threads, before its model),
    # "auto": "actor" where the actors run on CPU, no actor resources pin them to some nodes and
    # score_actors asks for no fewer than the nodes, else "tasks" (a GPU actor must not wait on JPEG
    # decode; the other nodes decode for pinned actors or for fewer actors than nodes).
    score_decode: Literal["auto", "tasks", "actor"] = Field(
        default="auto", description="where images are decoded: auto, tasks or actor"
    )
    # Custom Ray resources each model actor needs (JSON: {"model_slot": 1}): pins the actors to the nodes
    # that offer them (`ray start --resources`), e.g. GPU nodes, leaving CPU-only nodes to decode.
    score_actor_resources: dict[str, float] = Field(default_factory=dict, description="Ray resources/actor")
    score_part_rows: int = Field(default=2000, ge=1, description="rows per parquet part (the unit of resume)")
    score_read_attempts: int = Field(default=4, ge=1, le=20, description="tries per image on storage errors")
    # Also publish each image's score, tag probabilities and embedding to Feast's online store, keyed by
    # (image id, model version), for search and recommendation. Costs a second backbone pass per image
    # (the embedding; pipelines/score_catalog.py says why).
    score_online: bool = Field(default=False, description="publish scores + embeddings to Feast online")
    # What the lightbox_score_catalog DAG scores when a promotion moves the champion (and by default when
    # triggered by hand): None skips the scheduled run. Output None: <state>/scores (parquet parts).
    catalog_source: str | None = None
    catalog_out: str | None = Field(default=None, description="a parquet folder or `postgres`")

    # --- gates ---------------------------------------------------------------------------------
    # Test-split floors (the training run's own metrics). Every bound is the metric's own range: a floor
    # below it (SROCC -5) passes any model, a ceiling above it (MAE 2) fails none.
    gate_min_srocc: float = Field(default=0.5, ge=-1.0, le=1.0, description="score SROCC floor")
    gate_max_mae: float = Field(
        default=0.25, gt=0.0, le=1.0, description="score MAE ceiling, a fraction of the score range"
    )
    gate_min_map: float = Field(default=0.3, ge=0.0, le=1.0, description="tag mAP floor")
    # The frozen golden set: <project_dir>/<golden_subdir>, tracked by <golden_subdir>.dvc. Its scenes
    # come from a seed stream disjoint from the training sources; never trained or tuned on.
    golden_subdir: str = "golden"
    golden_sources: int = Field(default=3, ge=1, le=6, description="x31 images: pristine + 6 kinds x 5")
    golden_seed: int = Field(default=20_260_401, ge=0)
    # Golden-set floors and ceilings.
    gate_golden_min_srocc: float = Field(default=0.5, ge=-1.0, le=1.0, description="golden SROCC floor")
    gate_golden_max_mae: float = Field(
        default=0.25, gt=0.0, le=1.0, description="golden MAE ceiling, a fraction of the score range"
    )
    gate_golden_min_map: float = Field(default=0.3, ge=0.0, le=1.0, description="golden tag mAP floor")
    gate_golden_min_tag_ap: float = Field(
        default=0.1, ge=0.0, le=1.0, description="AP floor for every tag with positives"
    )
    gate_golden_max_ece: float = Field(default=0.25, ge=0.0, le=1.0, description="tag calibration ceiling")
    # No regression against the champion on the golden set (absolute slack per metric).
    gate_regression_tolerance: float = Field(
        default=0.02, ge=0.0, le=1.0, description="allowed drop from the champion per metric"
    )
    # Behavioural tests; score moves are fractions of the score range.
    gate_invariance_epsilon: float = Field(
        default=0.05, ge=0.0, le=1.0, description="max score move, resize/JPEG q95"
    )
    gate_direction_slack: float = Field(
        default=0.05, ge=0.0, le=1.0, description="allowed rise between levels"
    )
    gate_direction_min_drop: float = Field(
        default=0.05, ge=0.0, le=1.0, description="pristine -> level 5 drop"
    )
    # Share of cases that must pass; 0.9 tolerates one odd ladder of 12 (3 sources x 4 kinds).
    gate_direction_min_pass_rate: float = Field(default=0.9, ge=0.0, le=1.0)
    gate_min_functionality_pass_rate: float = Field(default=0.9, ge=0.0, le=1.0)
    # A per-tag AP floor applies to every tag with at least this many golden positives.
    gate_min_golden_tag_examples: int = Field(default=3, ge=1)
    # Behavioural checks: "auto" runs those the golden set supports (the synthetic grid has all of
    # them; any golden set has resize/JPEG invariance); "on" adds "blur lowers the score" on any
    # scored golden set; "off" runs none.
    gate_behaviour: Literal["auto", "on", "off"] = "auto"
    # Serving fitness: one batch through the serving predictor on this machine.
    gate_latency_batch_size: int = Field(default=8, ge=1, le=1024)
    gate_max_batch_latency_ms: float = Field(
        default=3000.0, gt=0.0, le=600_000.0, description="serving-fitness latency ceiling"
    )
    # The ONNX export serves only when it answers as the eager model does on the golden set: outputs
    # (normalised score and tag probabilities) within this absolute difference, and every golden
    # metric (SROCC, MAE, mAP, per-tag AP) within the metric delta. Else the version serves on torch.
    # `lightbox promote` can require real traffic first: at least this many images shadowed to the
    # candidate (0: no requirement) and its agreement with the champion on them.
    promote_min_shadow_samples: int = Field(default=0, ge=0, le=10_000_000)
    promote_min_shadow_srocc: float = Field(
        default=0.8, ge=-1.0, le=1.0, description="shadow score SROCC with the champion, floor"
    )
    promote_min_shadow_tag_agreement: float = Field(
        default=0.9, ge=0.0, le=1.0, description="shadow per-tag agreement with the champion, floor"
    )
    gate_export_max_abs_diff: float = Field(
        default=1e-3, gt=0.0, le=1.0, description="exported vs eager outputs, max |difference|"
    )
    gate_export_max_metric_delta: float = Field(
        default=0.005, ge=0.0, le=1.0, description="exported vs eager golden metrics, max |delta|"
    )
    # An int8 candidate (`lightbox quantize`) is refused unless every golden metric it is judged on
    # (SROCC, PLCC, MAE, mAP, per-tag AP) stays within this of its own fp32 weights'.
    gate_int8_max_metric_delta: float = Field(
        default=0.02, ge=0.0, le=1.0, description="int8 vs its fp32 weights, golden metrics max |delta|"
    )
    # The training DAG also registers and gates an int8 candidate of each trained version (not promoted).
    train_int8: bool = False
    # Training images the int8 quantizer calibrates its activation ranges on (the first of the train split).
    quantize_calibration_images: int = Field(default=64, ge=1, le=10_000)

    # --- serving -------------------------------------------------------------------------------
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(default=8080, ge=1, le=65535)
    # None: `lightbox serve` measures the device at start and takes the largest batch at near-peak
    # images/s whose pass fits a share of the latency budget (serving.calibration); with serve_calibrate
    # off, the device's table default (serving.runtime.DEFAULT_MAX_BATCH).
    serve_max_batch_size: int | None = Field(default=None, ge=1, le=4096)
    serve_calibrate: bool = Field(default=True, description="measure the batch cap at start (a few s)")
    # auto: the fastest runtime the gates verified for the version on this device (ONNX Runtime on CPU
    # when its export passed, torch otherwise and on CUDA); torch / onnxruntime force one.
    serve_runtime: Literal["auto", "torch", "onnxruntime"] = "auto"
    # Every request can wait this long for its batch to fill: past seconds it is a typo, not a tuning.
    serve_max_wait_ms: float = Field(default=5.0, ge=0.0, le=10_000.0, description="batch fill wait")
    serve_max_queue: int = Field(default=256, ge=1)
    # The response time the server promises: a request whose estimated wait (the images ahead of it at
    # the measured images/s) is over this is refused with 429 before its body is decoded
    # (serving/admission.py). Past minutes it is a typo, not a promise.
    serve_max_latency_ms: float = Field(
        default=1000.0, gt=0.0, le=600_000.0, description="admission latency budget"
    )
    # Weigh each photo by what its format and size will cost to decode (learned per format), so a burst
    # of phone HEICs or camera-size JPEGs after small photos is judged on its own cost from the first
    # request (serving/decode_cost.py). Off: every image counts as one, at the learned average.
    serve_weigh_decodes: bool = Field(default=True, description="admission weighs photos by decode cost")
    serve_max_body_bytes: int = Field(default=20_000_000, ge=1)
    # A request whose body has not arrived by then gets 408 and its connection is closed: a stalled or
    # trickling upload must not hold a connection (and its admission) for ever. A phone on a slow link
    # sends a 5 MB photo in well under a minute.
    serve_body_timeout_s: float = Field(default=60.0, gt=0.0, le=3_600.0, description="408 past this")
    # None for both: sized for the device (serving.runtime.compute_layout). On CPU, batches running side
    # by side on one thread each beat one batch on every core (measured: docs/benchmarks.md).
    serve_max_concurrent_batches: int | None = Field(default=None, ge=1, description="None: by device")
    serve_torch_threads: int | None = Field(default=None, ge=1, description="None: cores / batches (CPU)")
    serve_max_images_per_request: int = Field(default=64, ge=1)
    serve_decode_workers: int | None = Field(default=None, ge=1, description="None: one per CPU core")
    serve_tag_threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="default ?threshold=")
    serve_reload_interval_s: float = Field(
        default=30.0, ge=0.0, le=86_400.0, description="alias polling; 0: off"
    )
    serve_admin_token: str | None = Field(default=None, description="bearer token; None: /admin off")
    # Web pages on these origins may call the server from a browser (CORS): "https://app.example.com,
    # http://localhost:3000", or "*" for any. None: only same-origin pages (the upload page at /).
    serve_cors_origins: str | None = Field(default=None, description="ORIGIN,... or *: browser callers")
    # Several registered models in one server (serving/multi.py): "NAME@ALIAS,NAME@ALIAS"; None: the one
    # model model_name@champion_alias (today's server, answers unchanged). The first is the primary: its
    # answer keeps the top-level fields of /predict.
    serve_models: str | None = Field(default=None, description="NAME@ALIAS,...; None: model_name@champion")
    # How long a merged /predict waits for each model; past it that model's entry is an error and the
    # others still answer. None: no deadline of its own (admission's budget bounds the wait).
    serve_model_timeout_ms: float | None = Field(default=None, gt=0.0, le=600_000.0)
    # Served models (names from serve_models, or model_name) that run in a worker process of their own
    # (serving/minions.py): "NAME,NAME". For a model with other dependencies, or one that must not take
    # the others down: a crashed worker is restarted, and meanwhile that model's entry is an error.
    serve_isolated_models: str | None = Field(default=None, description="NAME,...: own worker process")
    # The longest an isolated model's worker may take for one batch before it is killed and restarted.
    serve_worker_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    # The primary model's challenger (challenger_alias) beside its champion (serving/challenger.py).
    # Canary: this percent of request keys (X-Lightbox-Key; sticky) is answered by the challenger.
    serve_canary_percent: float = Field(default=0.0, ge=0.0, le=100.0)
    # Shadow: this share of requests is also computed by the challenger in the background and compared.
    serve_shadow_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    # How often the shadow agreement is written onto the challenger's registry version; 0: never.
    serve_shadow_record_interval_s: float = Field(default=300.0, ge=0.0, le=86_400.0)

    # --- Airflow -------------------------------------------------------------------------------
    airflow_home: Path | None = None  # default: <state>/airflow
    airflow_database_url: str | None = None  # default: SQLite in the home; postgresql+psycopg2://... in prod

    # --- production backends (docs/deploy.md). Every default keeps the embedded profile ------------
    # Any S3 API (AWS, MinIO, Ceph): the DVC remote and MLflow's artifacts. None: AWS itself.
    s3_endpoint_url: str | None = None
    # Namespaces Feast's registry rows and online keys, so two deployments (or test runs) share servers.
    feast_project: str = Field(default="lightbox", pattern=r"^[A-Za-z0-9][A-Za-z0-9_]*$")
    feast_online_store: Literal["sqlite", "redis"] = "sqlite"
    feast_redis: str = Field(default="127.0.0.1:6379", description="Feast syntax: host:port[,db=N,password=]")
    # The upload queue consumer (pipelines/score_uploads.py): RabbitMQ in, PostgreSQL out.
    queue_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    queue_name: str = "lightbox.uploads"  # its dead letters go to <queue_name>.dead
    queue_delivery_limit: int = Field(default=5, ge=1, description="redeliveries before dead-lettering")
    results_dsn: str | None = Field(default=None, description="PostgreSQL DSN/URL of the results table")
    results_table: str = Field(default="image_scores", pattern=r"^[a-z_][a-z0-9_]*$")
    # Drift (pipelines/monitor.py): recent predictions against the model's own test split.
    monitor_psi_threshold: float = Field(
        default=0.25, gt=0.0, le=10.0, description="score PSI over this: drift"
    )
    monitor_js_threshold: float = Field(
        default=0.1, gt=0.0, le=1.0, description="a tag's Jensen-Shannon divergence over this: drift"
    )
    # AMQP's prefetch count is a 16-bit field.
    consume_batch_size: int = Field(default=16, ge=1, le=65_535, description="also the broker prefetch")
    consume_max_wait_s: float = Field(default=0.5, ge=0.0, le=3600.0, description="max wait to fill a batch")

    @field_validator("project_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("champion_alias", "challenger_alias", "previous_alias")
    @classmethod
    def _alias_name(cls, v: str) -> str:
        return check_alias(v)

    @field_validator("dvc_remote_url")
    @classmethod
    def _dvc_remote(cls, v: str | None) -> str | None:
        # The stack installs DVC's S3 plugin only: another scheme fails deep inside DVC's config loader.
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", v or "")
        if scheme and scheme.group(1).lower() not in ("s3", "file"):
            raise ValueError(
                f"the {scheme.group(1)}:// scheme is not supported; use s3://bucket/prefix or a local folder"
            )
        return v

    @field_validator("serve_models")
    @classmethod
    def _model_specs(cls, v: str | None) -> str | None:
        if v is not None:
            parse_model_specs(v)  # raises with the bad entry in the message
        return v

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, v: str | None) -> str | None:
        # Checked here, not by Ray: Ray takes `foo` with a 78-line traceback, and a mistyped port after
        # minutes of retries (lightbox/ray_cluster.py checks that the address answers).
        if v is None or not v.strip():
            return None  # LIGHTBOX_RAY_ADDRESS= (empty) means the local Ray, as unset does
        ray_endpoint(v.strip())  # raises with what the address must look like
        return v.strip()

    @model_validator(mode="after")
    def _isolated_are_served(self) -> Settings:
        served = [name for name, _ in self.served_models]
        unknown = [n for n in self.isolated_models if n not in served]
        if unknown:
            raise ValueError(f"serve_isolated_models names {unknown}, which are not served ({served})")
        return self

    @model_validator(mode="after")
    def _aliases_are_distinct_names(self) -> Settings:
        # The same name for two roles (previous_alias=champion) makes a promotion set both on one
        # version, and the version to roll back to is recorded nowhere.
        roles = (
            ("champion_alias", self.champion_alias),
            ("challenger_alias", self.challenger_alias),
            ("previous_alias", self.previous_alias),
        )
        for (first, alias), (second, other) in itertools.combinations(roles, 2):
            if alias == other:
                raise ValueError(f"{first} and {second} are both {alias!r}: give each role its own alias")
        return self

    @model_validator(mode="after")
    def _something_left_to_train_on(self) -> Settings:
        if self.split_validation_fraction + self.split_test_fraction >= 1.0:
            raise ValueError(
                "split_validation_fraction + split_test_fraction must be < 1 (nothing left to train on)"
            )
        return self

    @property
    def served_models(self) -> list[tuple[str, str]]:
        """[(model name, alias)] `lightbox serve` serves, the primary first."""
        if self.serve_models is None:
            return [(self.model_name, self.champion_alias)]
        return parse_model_specs(self.serve_models)

    @property
    def cors_origins(self) -> list[str]:
        """Origins whose pages may call the server from a browser (empty: none but its own)."""
        return [o.strip().rstrip("/") for o in (self.serve_cors_origins or "").split(",") if o.strip()]

    @property
    def isolated_models(self) -> list[str]:
        """Names of the served models that run in a worker process of their own."""
        return [n.strip() for n in (self.serve_isolated_models or "").split(",") if n.strip()]

    # Derived locations. Properties, not fields, so that overriding project_dir moves them all.
    @property
    def state(self) -> Path:
        return self.state_dir if self.state_dir.is_absolute() else self.project_dir / self.state_dir

    @property
    def data_dir(self) -> Path:
        return self.project_dir / self.data_subdir

    @property
    def golden_dir(self) -> Path:
        return self.project_dir / self.golden_subdir

    @property
    def quarantine_dir(self) -> Path:
        return self.state / "quarantine"

    @property
    def reports_dir(self) -> Path:
        return self.state / "reports"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.state / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return self.mlflow_artifact_root or str(self.state / "mlartifacts")

    @property
    def dvc_remote(self) -> str:
        return self.dvc_remote_url or str(self.state / "dvc-remote")

    @property
    def feast_repo_path(self) -> Path:
        if self.feast_repo is None:
            return CODE_ROOT / "features"
        return self.feast_repo if self.feast_repo.is_absolute() else self.project_dir / self.feast_repo

    @property
    def feast_registry_path(self) -> str:
        return self.feast_registry or str(self.state / "feast" / "registry.db")

    @property
    def feast_online_path(self) -> str:
        return self.feast_online_store_path or str(self.state / "feast" / "online.db")

    @property
    def feast_offline_path(self) -> Path:
        return Path(self.feast_offline_dir) if self.feast_offline_dir else self.state / "feast" / "offline"

    @property
    def feast_registry_type(self) -> str:
        """``sql`` for a SQLAlchemy URL (postgresql+psycopg2://...), else ``file`` (a path, s3://...)."""
        scheme = self.feast_registry_path.split("://", 1)[0] if "://" in self.feast_registry_path else ""
        return "sql" if scheme.split("+", 1)[0] in ("postgresql", "mysql", "sqlite") else "file"

    @property
    def feast_yaml(self) -> Path:
        """The feature_store yaml for the chosen online store (same definitions, same code path)."""
        name = "feature_store.yaml" if self.feast_online_store == "sqlite" else "feature_store.redis.yaml"
        return self.feast_repo_path / name

    @property
    def dvc_endpoint_url(self) -> str | None:
        return self.dvc_remote_endpoint_url or self.s3_endpoint_url

    @property
    def catalog_out_path(self) -> str:
        return self.catalog_out or str(self.state / "scores")

    @property
    def airflow_home_path(self) -> Path:
        return self.airflow_home or self.state / "airflow"

    def feast_env(self) -> dict[str, str]:
        """Values for the ``${...}`` placeholders in features/feature_store.yaml."""
        return {
            "LIGHTBOX_FEAST_REGISTRY_PATH": self.feast_registry_path,
            "LIGHTBOX_FEAST_ONLINE_PATH": self.feast_online_path,
            "LIGHTBOX_FEAST_OFFLINE_PATH": str(self.feast_offline_path),
            "LIGHTBOX_FEAST_PROJECT": self.feast_project,
            "LIGHTBOX_FEAST_REGISTRY_TYPE": self.feast_registry_type,
            "LIGHTBOX_FEAST_REDIS": self.feast_redis,
        }


_MODEL_SPEC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*@[A-Za-z0-9][A-Za-z0-9_-]*$")


def parse_model_specs(text: str) -> list[tuple[str, str]]:
    """``"a@champion, b@challenger"`` -> [("a", "champion"), ("b", "challenger")]; ValueError naming the
    bad entry, an empty list, or a model named twice (two entries would answer under one name)."""
    specs: list[tuple[str, str]] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not _MODEL_SPEC.match(entry):
            raise ValueError(f"model {entry!r} is not NAME@ALIAS (e.g. lightbox@champion)")
        name, alias = entry.split("@")
        if any(name == seen for seen, _ in specs):
            raise ValueError(f"model {name!r} is named twice in {text!r}")
        specs.append((name, alias))
    return specs


RAY_ADDRESS_FORMS = "auto, HOST:PORT (the head's GCS port, 6379) or ray://HOST:PORT (Ray Client, 10001)"


def ray_endpoint(address: str) -> tuple[str, int] | None:
    """The (host, port) a Ray address connects to: the head's GCS for ``HOST:PORT``, its Ray Client
    server for ``ray://HOST:PORT``; None for ``auto`` (Ray finds a cluster started on this machine).
    ValueError, saying which forms are accepted, for anything else."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    parts = urlsplit(f"//{rest}")  # urlsplit reads host and port (an [IPv6] host too) after //
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is no number or out of 0-65535
        host, port = None, None
    if "://" in rest or not host or not port or parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError(f"not a Ray address: use {RAY_ADDRESS_FORMS}, or leave it empty for a local Ray")
    return host, port


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
_SECRET_NAMES = ("token", "password", "secret")


def redacted(settings: Settings) -> dict[str, object]:
    """The settings for display: passwords in URLs and secret-named fields masked (`lightbox settings`
    must be safe to paste into an issue). Subprocesses get the real values through settings_env."""
    out: dict[str, object] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is not None and any(k in name for k in _SECRET_NAMES):
            out[name] = "***"
        elif isinstance(value, str):
            out[name] = redact_url(value)
        else:
            out[name] = value
    return out


def effective(settings: Settings) -> dict[str, str]:
    """Where things actually are, once the defaults of the unset settings are filled in (a raw
    ``mlflow_tracking_uri: null`` says nothing about which registry a command reads); passwords masked."""
    values = {
        "project_dir": str(settings.project_dir),
        "state": str(settings.state),
        "mlflow_tracking_uri": settings.tracking_uri,
        "mlflow_artifact_root": settings.artifact_root,
        "dvc_remote": settings.dvc_remote,
        "feast_repo": str(settings.feast_repo_path),
        "feast_yaml": str(settings.feast_yaml),
        "feast_registry": settings.feast_registry_path,
        "feast_online_store": settings.feast_online_path,
        "feast_offline_dir": str(settings.feast_offline_path),
        "airflow_home": str(settings.airflow_home_path),
        "data_dir": str(settings.data_dir),
        "golden_dir": str(settings.golden_dir),
    }
    return {name: redact_url(value) for name, value in values.items()}


def redact_url(value: str) -> str:
    """A URL or DSN with its password masked, for messages and displays."""
    masked = _URL_PASSWORD.sub(lambda m: m["scheme"] + "***@", value)
    return re.sub(r"password=[^,;&\s]+", "password=***", masked)


def settings_env(settings: Settings) -> dict[str, str]:
    """The explicitly set fields as LIGHTBOX_* variables, so a subprocess (Airflow, a server) builds
    the same settings. project_dir is always passed: a subprocess may start elsewhere."""
    env = {"LIGHTBOX_PROJECT_DIR": str(settings.project_dir)}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is None:
            continue
        env[f"LIGHTBOX_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


ENV_PREFIX = "LIGHTBOX_"

# LIGHTBOX_* variables that are set on purpose but are no Settings field; any other one is a typo.
NOT_SETTINGS: frozenset[str] = frozenset(
    {
        # Settings.feast_env exports these for the ${...} placeholders of features/feature_store*.yaml,
        # into this process's environment (lightbox.adapters.feast_store) and so into its children.
        "LIGHTBOX_FEAST_REGISTRY_PATH",
        "LIGHTBOX_FEAST_ONLINE_PATH",
        "LIGHTBOX_FEAST_OFFLINE_PATH",
        "LIGHTBOX_FEAST_REGISTRY_TYPE",
        # `lightbox promote/rollback --by`: who acts (set by CI, .github/workflows/promote.yml).
        "LIGHTBOX_ACTOR",
        # The servers the services tests use (tests/services/conftest.py, docs/deploy.md).
        "LIGHTBOX_TEST_PG_ADMIN",
        "LIGHTBOX_TEST_REDIS",
        "LIGHTBOX_TEST_AMQP",
    }
)


class SettingsError(Exception):
    """The settings cannot be built: one line per unknown variable or rejected value."""


def setting_names() -> list[str]:
    """Every LIGHTBOX_* variable the settings read."""
    return [ENV_PREFIX + name.upper() for name in Settings.model_fields]


# Not "see `lightbox settings`": that command refuses the same variable.
_NO_MATCH = "the settings are the fields of lightbox/settings.py"


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per LIGHTBOX_* variable that is neither a setting nor in NOT_SETTINGS, with the closest
    known name: pydantic-settings reads only the names it knows, so a typo would be ignored silently."""
    known = setting_names()
    # Compared without the prefix: every name shares it, and it would make any two names look alike.
    candidates = [n.removeprefix(ENV_PREFIX) for n in known + sorted(NOT_SETTINGS)]
    lines = []
    for var in sorted(environ):
        name = var.upper()  # the settings read the environment case-insensitively
        if not name.startswith(ENV_PREFIX) or name in known or name in NOT_SETTINGS:
            continue
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), candidates, n=1, cutoff=0.6)
        hint = f"did you mean {ENV_PREFIX}{close[0]}?" if close else _NO_MATCH
        lines.append(f"{var}: unknown setting; {hint}")
    return lines


def load_settings(**overrides: object) -> Settings:
    """Build the settings once at an entry point; overrides win over the environment.

    Raises SettingsError with one line per problem (``LIGHTBOX_GATE_MIN_SROCC=-5: must be >= -1 (score
    SROCC floor)``): an unknown LIGHTBOX_* variable, or a value of the wrong type or out of its bounds.
    """
    problems = unknown_variables(os.environ)
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems += _describe_errors(exc, overrides, os.environ)
    if problems:
        raise SettingsError("\n".join(problems))
    return settings


def _describe_errors(
    exc: ValidationError, overrides: Mapping[str, object], environ: Mapping[str, str]
) -> list[str]:
    env = {k.upper(): (k, v) for k, v in environ.items()}
    lines: list[str] = []
    seen: set[str] = set()
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        if field in seen:  # a union field reports once per member type: the first says enough
            continue
        seen.add(field)
        info = Settings.model_fields.get(field)
        why = f" ({info.description})" if info is not None and info.description else ""
        what = _constraint(err)
        if not field:  # a check across fields: its message names them
            lines.append(f"settings: {what}")
        elif field in overrides or info is None:
            lines.append(f"{field}={_shown(field, err['input'])!r}: {what}{why}")
        else:
            var, raw = env.get(ENV_PREFIX + field.upper(), (ENV_PREFIX + field.upper(), err["input"]))
            lines.append(f"{var}={_shown(field, raw)}: {what}{why}")
    return lines


def _shown(field: str, value: Any) -> Any:
    """The rejected value as it may appear in a terminal or a CI log: secrets masked."""
    if any(k in field for k in _SECRET_NAMES):
        return "***"
    return redact_url(value) if isinstance(value, str) else value


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
_KEYS = {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le", "less_than": "lt"}
_PLAIN = {
    "finite_number": "must be a finite number",
    "float_parsing": "must be a number",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_parsing": "must be true or false",
    "extra_forbidden": "unknown setting",
}


def _constraint(err: Mapping[str, Any]) -> str:
    """What the value must be, in a few words."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _BOUNDS:
        return f"must be {_BOUNDS[kind]} {_number(ctx[_KEYS[kind]])}"
    if kind in _PLAIN:
        return _PLAIN[kind]
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    return str(err["msg"]).removeprefix("Value error, ")
