"""The production-backend switches: settings alone choose the stores, and defaults stay embedded."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from lightbox.adapters import airflow_runner
from lightbox.settings import Settings, settings_env


def test_defaults_stay_embedded(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path)
    assert s.feast_registry_type == "file"
    assert s.feast_yaml.name == "feature_store.yaml"
    assert s.dvc_endpoint_url is None
    env = airflow_runner.airflow_env(s)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")


@pytest.mark.parametrize(
    ("registry", "kind"),
    [
        ("postgresql+psycopg2://u@h/feast?sslmode=disable", "sql"),
        ("postgresql://u@h/feast", "sql"),
        ("sqlite:///registry.db", "sql"),
        ("s3://bucket/registry.pb", "file"),  # Feast's file registry can live on S3
        ("/var/feast/registry.db", "file"),
    ],
)
def test_registry_type_follows_the_url(tmp_path: Path, registry: str, kind: str) -> None:
    assert Settings(project_dir=tmp_path, feast_registry=registry).feast_registry_type == kind


def test_redis_online_store_picks_a_yaml_that_differs_only_there(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path, feast_online_store="redis")
    assert s.feast_yaml.name == "feature_store.redis.yaml"
    embedded = yaml.safe_load(Settings(project_dir=tmp_path).feast_yaml.read_text())
    redis = yaml.safe_load(s.feast_yaml.read_text())
    assert redis["online_store"] == {"type": "redis", "connection_string": "${LIGHTBOX_FEAST_REDIS}"}
    assert {k: v for k, v in redis.items() if k != "online_store"} == {
        k: v for k, v in embedded.items() if k != "online_store"
    }
    with pytest.raises(ValidationError, match="feast_online_store"):
        Settings(project_dir=tmp_path, feast_online_store="dynamodb")


def test_shared_s3_endpoint_reaches_dvc_unless_dvc_has_its_own(tmp_path: Path) -> None:
    s = Settings(project_dir=tmp_path, s3_endpoint_url="http://minio:9000")
    assert s.dvc_endpoint_url == "http://minio:9000"
    own = Settings(project_dir=tmp_path, s3_endpoint_url="http://a", dvc_remote_endpoint_url="http://b")
    assert own.dvc_endpoint_url == "http://b"


def test_feast_project_and_results_table_are_safe_identifiers(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="feast_project"):
        Settings(project_dir=tmp_path, feast_project="a-b; drop")
    with pytest.raises(ValidationError, match="results_table"):
        Settings(project_dir=tmp_path, results_table='x"; drop table y; --')


def test_airflow_on_postgresql_gets_an_async_url_without_asyncpg(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://airflow@pg:5432/airflow?sslmode=disable"
    s = Settings(project_dir=tmp_path, airflow_database_url=url)
    env = airflow_runner.airflow_env(s)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == url
    assert (
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"]
        == "postgresql+psycopg://airflow@pg:5432/airflow?sslmode=disable"
    )
    service = airflow_runner.service_env(s, 8793)
    assert service["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert service["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:8793"
    assert int(service["AIRFLOW__CORE__PARALLELISM"]) >= 2
    # A subprocess (a task, a server) rebuilds the same settings from the environment.
    assert settings_env(s)["LIGHTBOX_AIRFLOW_DATABASE_URL"] == url
    with pytest.raises(ValueError, match="airflow_database_url"):
        airflow_runner.service_env(Settings(project_dir=tmp_path), 8793)
