"""``mlflow_registry.alias_lock`` on a real (embedded SQLite) registry: mutual exclusion between
threads doing read-modify-write on the registry, a dead holder's lock broken after its lease (once,
by one waiter), a live one waited for and reported, and a holder never deleting a lock not its own.
"""

from __future__ import annotations

import threading
import time

import pytest

from lightbox.adapters import mlflow_registry
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


def test_a_dead_holders_lock_is_broken_after_its_lease(settings: Settings) -> None:
    c = mlflow_registry.client(settings)
    name = mlflow_registry.alias_lock_name(settings, "champion")
    dead = c.create_registered_model(name, tags={"lock.holder": "ci (gone)", "lock.token": "x"})
    started = time.monotonic()
    with mlflow_registry.alias_lock(settings, "champion", "me", lease_s=0.5, wait_s=10, poll_s=0.05):
        waited = time.monotonic() - started
        assert c.get_registered_model(name).tags["lock.holder"] == "me"
    assert 0.5 <= waited < 10
    assert _names(settings) == {settings.model_name, f"{name}.stale-{dead.creation_timestamp}"}


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
