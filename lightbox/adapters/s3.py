"""S3 through boto3: the only module that imports it. Any S3 API (AWS, MinIO, Ceph, moto's server) by
endpoint URL (``settings.s3_endpoint_url``); credentials come from boto3's usual chain (environment,
profile, role), never from settings."""

from __future__ import annotations

import threading
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from botocore.client import BaseClient as S3Client


class ObjectNotFound(FileNotFoundError):
    """No object at that s3:// URL."""


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key/parts`` -> (bucket, key)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket/key URL: {url!r}")
    return parts.netloc, parts.path.lstrip("/")


_building = threading.Lock()
POOL = 64  # connections per client: a large node's read threads, two calls each


@cache
def client(endpoint_url: str | None) -> S3Client:
    import boto3
    from botocore.config import Config

    # One client per endpoint: boto3 clients are thread-safe and slow to build (~50 ms). Building one is
    # not (boto3's default session), and a bulk scoring actor reads on several threads: one at a time.
    # Its connection pool is sized for those threads (botocore's default, 10, would open a new
    # connection per object past it).
    with _building:
        return boto3.client("s3", endpoint_url=endpoint_url, config=Config(max_pool_connections=POOL))


def read(url: str, endpoint_url: str | None) -> bytes:
    bucket, key = split_url(url)
    c = client(endpoint_url)
    try:
        return c.get_object(Bucket=bucket, Key=key)["Body"].read()
    except c.exceptions.NoSuchKey:
        raise ObjectNotFound(f"no object at {url}") from None


def write(url: str, data: bytes, endpoint_url: str | None) -> None:
    bucket, key = split_url(url)
    client(endpoint_url).put_object(Bucket=bucket, Key=key, Body=data)


def exists(url: str, endpoint_url: str | None) -> bool:
    from botocore.exceptions import ClientError

    bucket, key = split_url(url)
    try:
        client(endpoint_url).head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        # 404 means absent; anything else (403, a wrong endpoint) must not read as "absent".
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def list_keys(url: str, endpoint_url: str | None) -> list[str]:
    """Every key under an ``s3://bucket/prefix`` URL, relative to the prefix, sorted."""
    return [key for key, _ in list_versions(url, endpoint_url)]


def list_versions(url: str, endpoint_url: str | None) -> list[tuple[str, str]]:
    """(key relative to the prefix, ``object_version``) of every object under an ``s3://bucket/prefix``
    URL, sorted by key: what the listing says of each object, without reading one."""
    bucket, prefix = split_url(url)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    paginator = client(endpoint_url).get_paginator("list_objects_v2")
    objects = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        contents = page.get("Contents", [])
        objects += [
            (obj["Key"][len(prefix) :], object_version(obj))
            for obj in contents
            if not obj["Key"].endswith("/")
        ]
    return sorted(objects)


def object_version(obj: dict[str, Any]) -> str:
    """An object's version as list_objects_v2 describes it: its size and ETag, which an overwrite with
    other bytes changes (and one with the same bytes, uploaded whole, does not); LastModified where a
    store answers no ETag."""
    tag = str(obj.get("ETag") or "").strip('"') or obj["LastModified"].isoformat()
    return f"{obj['Size']}:{tag}"
