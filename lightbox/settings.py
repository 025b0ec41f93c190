"""The one settings object. Read from the environment (prefix ``LIGHTBOX_``) with embedded defaults.

Every default lives under one state folder (``.lightbox/``) so a fresh clone runs end to end with no
server; every URI can be replaced by configuration alone (PostgreSQL, Redis, S3, a Ray address).
Built once at each entry point (CLI command, DAG task, test) and passed down; nothing reads the
environment anywhere else.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The checkout this code runs from: dags/ and features/ are code, found beside the packages.
CODE_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIGHTBOX_", extra="forbid", frozen=True)

    # --- where things live -------------------------------------------------------------------
    project_dir: Path = Field(default_factory=Path.cwd, description="git + DVC repository root")
    state_dir: Path = Field(default=Path(".lightbox"), description="embedded state; relative to project_dir")

    # --- data ----------------------------------------------------------------------------------
    data_subdir: str = "data"  # tracked by <project_dir>/data.dvc
    dataset_sources: int = Field(default=40, ge=3, description="source images (photos + rendered scenes)")
    dataset_variants: int = Field(default=12, ge=1, description="distorted variants per source image")
    dataset_seed: int = 7
    image_max_side: int = Field(default=320, ge=32)
    max_pixels: int = Field(default=40_000_000, ge=1, description="decompression-bomb guard")
    min_image_side: int = 16
    max_quarantine_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    # --- import (pipelines/importer.py): the user's labelled photos -> data/ -----------------------
    # Tags on fewer images than this are listed in the label spec and left out of training.
    min_tag_count: int = Field(default=5, ge=1, description="images a tag needs to be trained on")
    split_validation_fraction: float = Field(default=0.15, ge=0.0, le=0.5)
    split_test_fraction: float = Field(default=0.15, ge=0.0, le=0.5)
    split_seed: int = 7
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
    ray_address: str | None = None  # None: a local Ray on the loopback address
    ray_num_cpus: int | None = None
    tune_trials: int = Field(default=4, ge=1)
    tune_epochs: int = Field(default=60, ge=1)
    tune_seed: int = 0
    use_gpu: bool | None = None  # None: use one when torch sees it

    # --- gates ---------------------------------------------------------------------------------
    # Test-split floors (the training run's own metrics).
    gate_min_srocc: float = 0.5
    gate_max_mae: float = Field(default=0.25, description="score MAE as a fraction of the score range")
    gate_min_map: float = 0.3
    # The frozen golden set: <project_dir>/<golden_subdir>, tracked by <golden_subdir>.dvc. Its scenes
    # come from a seed stream disjoint from the training sources; never trained or tuned on.
    golden_subdir: str = "golden"
    golden_sources: int = Field(default=3, ge=1, le=6, description="x31 images: pristine + 6 kinds x 5")
    golden_seed: int = 20_260_401
    # Golden-set floors and ceilings.
    gate_golden_min_srocc: float = 0.5
    gate_golden_max_mae: float = Field(default=0.25, description="fraction of the score range")
    gate_golden_min_map: float = 0.3
    gate_golden_min_tag_ap: float = Field(default=0.1, description="floor for every tag with positives")
    gate_golden_max_ece: float = Field(default=0.25, ge=0.0, le=1.0, description="tag calibration")
    # No regression against the champion on the golden set (absolute slack per metric).
    gate_regression_tolerance: float = Field(default=0.02, ge=0.0)
    # Behavioural tests.
    gate_invariance_epsilon: float = Field(
        default=0.05, ge=0.0, description="max score move, resize/JPEG q95"
    )
    gate_direction_slack: float = Field(default=0.05, ge=0.0, description="allowed rise between levels")
    gate_direction_min_drop: float = Field(default=0.05, ge=0.0, description="pristine -> level 5 drop")
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
    gate_latency_batch_size: int = Field(default=8, ge=1)
    gate_max_batch_latency_ms: float = Field(default=3000.0, gt=0.0)

    # --- serving -------------------------------------------------------------------------------
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(default=8080, ge=1, le=65535)
    # None: `lightbox serve` measures the device at start and takes the smallest batch with near-peak
    # images/s (serving.calibration); with serve_calibrate off, the device's table default
    # (serving.runtime.DEFAULT_MAX_BATCH).
    serve_max_batch_size: int | None = Field(default=None, ge=1)
    serve_calibrate: bool = Field(default=True, description="measure the batch cap at start (a few s)")
    serve_max_wait_ms: float = Field(default=5.0, ge=0.0)
    serve_max_queue: int = Field(default=256, ge=1)
    serve_max_body_bytes: int = Field(default=20_000_000, ge=1)
    # None for both: sized for the device (serving.runtime.compute_layout). On CPU, batches running side
    # by side on one thread each beat one batch on every core (measured: docs/benchmarks.md).
    serve_max_concurrent_batches: int | None = Field(default=None, ge=1, description="None: by device")
    serve_torch_threads: int | None = Field(default=None, ge=1, description="None: cores / batches (CPU)")
    serve_max_images_per_request: int = Field(default=64, ge=1)
    serve_decode_workers: int | None = Field(default=None, ge=1, description="None: one per CPU core")
    serve_tag_threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="default ?threshold=")
    serve_reload_interval_s: float = Field(default=30.0, ge=0.0, description="alias polling; 0: off")
    serve_admin_token: str | None = Field(default=None, description="bearer token; None: /admin off")

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
    consume_batch_size: int = Field(default=16, ge=1, description="also the broker prefetch")
    consume_max_wait_s: float = Field(default=0.5, ge=0.0, description="max wait to fill a batch")

    @field_validator("project_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

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
            masked = _URL_PASSWORD.sub(lambda m: m["scheme"] + "***@", value)
            out[name] = re.sub(r"password=[^,;&\s]+", "password=***", masked)
        else:
            out[name] = value
    return out


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


def load_settings(**overrides: object) -> Settings:
    """Build the settings once at an entry point; overrides win over the environment."""
    return Settings(**overrides)  # type: ignore[arg-type]
