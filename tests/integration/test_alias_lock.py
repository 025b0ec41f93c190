"""``mlflow_registry.alias_lock`` on a real (embedded SQLite) registry: mutual exclusion between
threads doing read-modify-write on the registry, a dead holder's lock broken at once on its host and
after its lease elsewhere (once, by one waiter, leaving no tombstone), a live one waited for and
reported, a holder never deleting a lock not its own, and `lightbox doctor` listing and repairing a
lock a killed promotion left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from lightbox.adapters import mlflow_registry
from lightbox.owner import this_host
from lightbox.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings(project_dir=tmp_path, model_name="locked")
    mlflow_registry.client(s).create_registered_model(s.model_name)
    return s


def _names(settings: Settings) -> set[str]:
    return {m.name for m in mlflow_registry.client(settings).search_registered_models()}


def test_threads_take_turns(settings: Settings) -> None:
    """Read, wait, write back + 1: without the lock the turns interleave and increments are lost."""
    c = mlflow_registry.client(settings)
    c.set_registered_model_tag(settings.model_name, "counter", "0")
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(3):
                with mlflow_registry.alias_lock(settings, "champion", f"worker {i}", poll_s=0.01):
                    n = int(c.get_registered_model(settings.model_name).tags["counter"])
                    time.sleep(0.02)
                    c.set_registered_model_tag(settings.model_name, "counter", str(n + 1))
        except BaseException as exc:  # reported by the assertion below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert c.get_registered_model(settings.model_name).tags["counter"] == "12"
    assert _names(settings) == {settings.model_name}  # released


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def test_a_dead_holders_lock_is_broken_after_its_lease(settings: Settings) -> None:
    """A holder that cannot be checked from here (another host; or no pid, from before they were
    recorded): only the lease tells. Broken, the lock leaves nothing in the registry."""
    c = mlflow_registry.client(settings)
    name = mlflow_registry.alias_lock_name(settings, "champion")
    elsewhere = {"lock.pid": str(dead_pid()), "lock.host": "another-host"}
    for tags in ({}, elsewhere):
        c.create_registered_model(name, tags={"lock.holder": "ci (gone)", "lock.token": "x"} | tags)
        started = time.monotonic()
        with mlflow_registry.alias_lock(settings, "champion", "me", lease_s=0.5, wait_s=10, poll_s=0.05):
            waited = time.monotonic() - started
            assert c.get_registered_model(name).tags["lock.holder"] == "me"
        assert 0.5 <= waited < 10
        assert _names(settings) == {settings.model_name}  # no lock, no ...stale-<ms> tombstone


def test_a_lock_whose_holder_died_on_this_host_is_broken_at_once(settings: Settings) -> None:
    """`lightbox promote` killed while holding the lock: the next one does not wait out the lease."""
    c = mlflow_registry.client(settings)
    name = mlflow_registry.alias_lock_name(settings, "champion")
    killed = {"lock.pid": str(dead_pid()), "lock.host": this_host()}
    c.create_registered_model(name, tags={"lock.holder": "killed", "lock.token": "x"} | killed)
    started = time.monotonic()
    with mlflow_registry.alias_lock(settings, "champion", "me", lease_s=60, wait_s=10, poll_s=0.05):
        waited = time.monotonic() - started
        held = c.get_registered_model(name)
        assert held.tags["lock.holder"] == "me"
        owner = mlflow_registry.lock_owner(held)  # what the next one reads
        assert (owner.pid, owner.host) == (os.getpid(), this_host())
    assert waited < 5
    assert _names(settings) == {settings.model_name}


def test_doctor_lists_a_killed_holders_lock_and_repairs_it(settings: Settings) -> None:
    from pipelines import doctor

    c = mlflow_registry.client(settings)
    name = mlflow_registry.alias_lock_name(settings, "champion")
    holder = "alice (host pid 7): promote v4 to @champion"
    killed = {"lock.pid": str(dead_pid()), "lock.host": this_host()}
    c.create_registered_model(name, tags={"lock.holder": holder, "lock.token": "x"} | killed)
    with mlflow_registry.alias_lock(settings, "challenger", "a live promotion"):  # not a leftover
        problems = doctor.check(settings)
        (lock,) = problems
        assert lock.what == name
        assert f"held by {holder}: its process {killed['lock.pid']} on {this_host()} is gone" in lock.why
        doctor.repair(problems)
        assert doctor.check(settings) == []
    assert _names(settings) == {settings.model_name}


def test_a_live_lock_is_waited_for_then_reported(settings: Settings) -> None:
    c = mlflow_registry.client(settings)
    name = mlflow_registry.alias_lock_name(settings, "champion")
    c.create_registered_model(name, tags={"lock.holder": "alice (host pid 7): promote v4", "lock.token": "x"})
    with (
        pytest.raises(mlflow_registry.AliasLockTimeout, match=r"locked by alice \(host pid 7\): promote v4"),
        mlflow_registry.alias_lock(settings, "champion", "me", lease_s=30, wait_s=0.3, poll_s=0.05),
    ):
        pass
    assert c.get_registered_model(name).tags["lock.holder"].startswith("alice")  # left alone


def test_release_leaves_a_lock_that_is_not_ours(settings: Settings) -> None:
    c = mlflow_registry.client(settings)
    name = mlflow_registry.alias_lock_name(settings, "champion")
    with mlflow_registry.alias_lock(settings, "champion", "slow holder"):
        # Meanwhile our lease ran out: someone broke the lock and took it.
        c.rename_registered_model(name, f"{name}.stale-1")
        c.create_registered_model(name, tags={"lock.holder": "next", "lock.token": "y"})
    assert c.get_registered_model(name).tags["lock.holder"] == "next"
