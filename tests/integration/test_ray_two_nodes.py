"""Bulk scoring on a real two-node Ray cluster (both nodes on loopback, with token authentication, as
Ray 2.60 requires of a node joining a cluster), in its two layouts: only the second node offers a
``model_slot``, so the model actor runs there (LIGHTBOX_SCORE_ACTOR_RESOURCES) while read tasks decode
on both nodes; and without it, one CPU model actor per node, each decoding its own images. The scores
are those of a local Ray run, and the code reaches the nodes through the job's runtime environment
(lightbox.ray_cluster ships the packages), not the checkout.

Teardown stops only what this test started: each ``ray start --block`` runs in a session of its own;
SIGTERM makes it drain and stop its node, and whatever is left of those sessions is killed by pid.
(``ray stop`` would stop every Ray on the machine, other users' included.)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from photo_samples import jpeg, photo

from lightbox.results import read_parts
from lightbox.settings import CODE_ROOT, Settings
from pipelines import score_catalog

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_node(args: list[str], env: dict[str, str], log: Path, resources: dict) -> subprocess.Popen:
    cmd = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=2"]
    cmd += ["--resources", json.dumps(resources), *args]
    with log.open("w") as out:
        return subprocess.Popen(
            cmd, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _session_pids(leaders: list[int]) -> list[int]:
    """Processes of the sessions these leaders started (Ray's daemons and workers stay in them)."""
    import psutil

    pids = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) in leaders:
                pids.append(p.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def _stop(nodes: list[subprocess.Popen], grace_s: float = 40) -> None:
    leaders = [n.pid for n in nodes]
    for n in nodes:
        if n.poll() is None:
            n.send_signal(signal.SIGTERM)  # `ray start --block`: drain, then stop the node's processes
    deadline = time.monotonic() + grace_s
    while _session_pids(leaders) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _session_pids(leaders):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for n in nodes:
        n.wait(10)
    assert not _session_pids(leaders), "Ray processes of this test are still running"


def _wait_for_nodes(address: str, n: int, env: dict[str, str], timeout_s: float = 90) -> dict[str, dict]:
    """Node id -> resources, once ``n`` nodes are alive."""
    probe = (
        f"import json, ray; ray.init(address={address!r}, log_to_driver=False); "
        "print(json.dumps({x['NodeID']: x['Resources'] for x in ray.nodes() if x['Alive']}))"
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
        if done.returncode == 0:
            nodes = json.loads(done.stdout.strip().splitlines()[-1])
            if len(nodes) == n:
                return nodes
        time.sleep(2)
    raise AssertionError(f"{n} nodes did not join {address} in {timeout_s} s")


def test_a_job_on_two_nodes_scores_as_a_local_one(registered_champion, tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    for i in range(64):  # 4 read tasks, spread over the nodes
        (pics / f"{i:02d}.jpg").write_bytes(jpeg(photo(500 + i)))
    base = {
        "project_dir": registered_champion.settings.project_dir,
        "score_batch_size": 2,
        "score_part_rows": 5,
    }
    local = score_catalog.run(Settings(ray_num_cpus=2, **base), str(pics), str(tmp_path / "local"))
    assert local.scored == 64

    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = dict(os.environ) | {
        "RAY_AUTH_MODE": "token",  # every node and the driver share one token (Ray's token auth)
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("PYTHONPATH", None)  # the nodes get lightbox from the job's runtime_env, not from the checkout
    temp = Path(f"/tmp/lbr-{secrets.token_hex(3)}")  # short: Ray's unix socket paths have a length limit
    nodes = [
        _start_node(
            ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"],
            env,
            tmp_path / "head.log",
            {},
        )
    ]
    try:
        _wait_for_nodes(address, 1, env)
        nodes.append(_start_node([f"--address={address}"], env, tmp_path / "worker.log", {"model_slot": 1}))
        resources = _wait_for_nodes(address, 2, env)
        # The job's driver in a process of its own, as `lightbox score` runs on a cluster: Ray keeps the
        # first auth token a process used, and this one may have run a local Ray already.
        job = env | {
            "PYTHONPATH": str(CODE_ROOT),
            "LIGHTBOX_PROJECT_DIR": str(base["project_dir"]),
            "LIGHTBOX_RAY_ADDRESS": address,
            "LIGHTBOX_SCORE_BATCH_SIZE": "2",
            "LIGHTBOX_SCORE_PART_ROWS": "5",
            "LIGHTBOX_SCORE_ACTOR_RESOURCES": json.dumps({"model_slot": 1}),
        }
        pinned = _score(pics, tmp_path / "cluster", job)
        unpinned = _score(pics, tmp_path / "per-node", {k: v for k, v in job.items() if "RESOURCES" not in k})
    finally:
        _stop(nodes)
        shutil.rmtree(temp, ignore_errors=True)

    assert pinned["scored"] == unpinned["scored"] == 64
    model_node = next(node for node, r in resources.items() if r.get("model_slot"))
    assert pinned["nodes"] == {model_node: 64}  # the model ran where the resource is
    assert set(pinned["read_nodes"]) == set(resources), pinned["read_nodes"]  # decoded on both nodes
    # Unpinned: a model actor on each node, which decoded what it scored.
    assert set(unpinned["nodes"]) == set(resources), unpinned["nodes"]
    assert unpinned["read_nodes"] == unpinned["nodes"]
    by_id = {r["image_id"]: r for r in read_parts(tmp_path / "local").to_pylist()}  # type: ignore[union-attr]
    for out in ("cluster", "per-node"):
        remote = read_parts(tmp_path / out)
        assert remote is not None and len(remote) == 64
        for row in remote.to_pylist():
            mine = by_id[row["image_id"]]
            assert row["uri"] == mine["uri"] and row["model_version"] == mine["model_version"]
            assert row["score"] == pytest.approx(mine["score"], abs=1e-5)
            assert dict(row["tag_probs"]) == pytest.approx(dict(mine["tag_probs"]), abs=1e-5)


def _score(pics: Path, out: Path, env: dict[str, str]) -> dict:
    """`lightbox score` as a job's driver, its summary."""
    cmd = [sys.executable, "-m", "lightbox.cli", "score", str(pics), "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{") :])  # type: ignore[no-any-return]
