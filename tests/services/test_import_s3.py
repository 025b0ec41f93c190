"""Importing from s3://bucket/prefix through the configured S3 endpoint (moto's server over HTTP)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import S3Server
from photo_samples import VOCAB, jpeg, photo

from lightbox import manifest
from lightbox.settings import Settings
from pipelines import importer
from pipelines.importer import ImportOptions

pytestmark = pytest.mark.services


def test_imagefolder_and_labelstudio_exports_import_from_s3(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    client = s3_server.client()
    lines = []
    tasks = []
    for i in range(16):
        key = f"shoot/pics/{i}.jpg"
        client.put_object(Bucket=bucket, Key=key, Body=jpeg(photo(500 + i)))
        lines.append(json.dumps({"file_name": f"pics/{i}.jpg", "score": 1 + i % 10, "tags": [VOCAB[i % 3]]}))
        result = [{"from_name": "q", "type": "number", "value": {"number": i}}]
        tasks.append(
            {"id": i, "data": {"image": f"s3://{bucket}/{key}"}, "annotations": [{"result": result}]}
        )
    client.put_object(Bucket=bucket, Key="shoot/metadata.jsonl", Body="\n".join(lines).encode())
    client.put_object(Bucket=bucket, Key="exports/project.json", Body=json.dumps(tasks).encode())
    before = {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}

    s = Settings(
        project_dir=tmp_path, s3_endpoint_url=s3_server.endpoint_url, golden_fraction=0.0, min_tag_count=3
    )
    result = importer.run(s, f"s3://{bucket}/shoot", ImportOptions(score_range="1,10"))
    assert result.format == "imagefolder" and result.n_images == 16 and result.tags == list(VOCAB)
    rows = manifest.read_manifest(s.data_dir)
    first = client.get_object(Bucket=bucket, Key=f"shoot/{rows[0]['original']}")["Body"].read()
    assert (s.data_dir / rows[0]["path"]).read_bytes() == first

    result = importer.run(s, f"s3://{bucket}/exports/project.json")
    assert result.format == "labelstudio" and result.n_images == 16 and result.score_range == [0.0, 15.0]
    after = {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert after == before  # nothing written to the user's bucket


def test_a_ground_truth_manifest_reads_its_photos_from_their_bucket(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    """The job's output manifest in its output prefix; the photos in the input prefix, read from S3 by
    their source-ref (nothing is copied beside the manifest)."""
    client = s3_server.client()
    rows = []
    for i in range(12):
        key = f"input/cam/{i}.jpg"
        client.put_object(Bucket=bucket, Key=key, Body=jpeg(photo(700 + i)))
        meta = {"class-name": VOCAB[i % 3], "type": "groundtruth/image-classification", "job-name": "j"}
        rows.append({"source-ref": f"s3://{bucket}/{key}", "look": i % 3, "look-metadata": meta})
    body = "\n".join(json.dumps(r) for r in rows).encode()
    client.put_object(Bucket=bucket, Key="output/look/manifests/output/output.manifest", Body=body)
    s = Settings(
        project_dir=tmp_path, s3_endpoint_url=s3_server.endpoint_url, golden_fraction=0.0, min_tag_count=3
    )
    result = importer.run(s, f"s3://{bucket}/output/look/manifests/output/output.manifest")
    assert result.format == "groundtruth" and result.n_images == 12 and result.tags == list(VOCAB)
    rows_by_tag = {r["tags"] for r in manifest.read_manifest(s.data_dir)}
    assert rows_by_tag == set(VOCAB)
    first = client.get_object(Bucket=bucket, Key="input/cam/0.jpg")["Body"].read()
    stored = {(s.data_dir / r["path"]).read_bytes() for r in manifest.read_manifest(s.data_dir)}
    assert first in stored
