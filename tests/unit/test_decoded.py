"""The decode cache of fine-tuning (training/decoded.py): what it keeps, the memory bound and the spill
file, that a killed run leaves nothing behind, and that the loader's workers live across epochs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_samples import tiny_images
from PIL import Image

from lightbox.imaging import decode_image, to_model_input
from training.augment import OPS, AugmentPolicy
from training.decoded import MIN_SIDE, CachePolicy, decode_all, reduce_for_cache, run_folder
from training.finetune import EpochSampler, ImageDataset, Images, loader


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    return tiny_images(tmp_path_factory.mktemp("decoded"), 10)


def test_small_images_are_kept_as_decoded_and_augment_exactly_as_without_the_cache(
    images: Images, tmp_path: Path
) -> None:
    kept = decode_all(images.paths, final=False, policy=CachePolicy(spill_root=tmp_path), workers=0)
    policy = AugmentPolicy(OPS, 1.0)
    cached, direct = ImageDataset(images, policy, 3, kept), ImageDataset(images, policy, 3)
    for i, path in enumerate(images.paths):
        assert np.array_equal(kept[i], np.asarray(decode_image(path.read_bytes())))
        for epoch in (1, 2):
            assert torch.equal(cached[i, epoch][0], direct[i, epoch][0])
    final = decode_all(images.paths, final=True, policy=CachePolicy(spill_root=tmp_path), workers=0)
    assert np.array_equal(final[0], to_model_input(decode_image(images.paths[0].read_bytes())))
    assert torch.equal(ImageDataset(images, None, 0, final)[0, 1][0], ImageDataset(images, None, 0)[0, 1][0])


def test_large_images_are_box_reduced_by_whole_factors_to_at_least_twice_the_model_input() -> None:
    kept = reduce_for_cache(Image.new("RGB", (3000, 900), (10, 20, 30)))
    assert kept.shape == (900 // 2, 3000 // 6, 3) and min(kept.shape[:2]) >= MIN_SIDE
    assert reduce_for_cache(Image.new("RGB", (2 * MIN_SIDE - 1, 300))).shape == (300, 2 * MIN_SIDE - 1, 3)


def test_past_the_memory_budget_images_spill_to_an_unlinked_file_and_read_back(
    images: Images, tmp_path: Path
) -> None:
    budget = 3 * 160 * 160 * 3
    kept = decode_all(images.paths, final=False, policy=CachePolicy(budget, tmp_path), workers=1)
    assert 0 < kept.memory_bytes <= budget and kept.spilled_bytes > 0
    assert kept.folder is not None and kept.folder.parent == tmp_path
    assert list(kept.folder.iterdir()) == []  # the spill file has no name: a kill cannot leave it
    for i, path in enumerate(images.paths):
        assert np.array_equal(kept[i], np.asarray(decode_image(path.read_bytes())))
    kept.close()
    assert list(tmp_path.iterdir()) == []


def test_images_from_workers_hold_no_file_descriptor_each(tmp_path: Path) -> None:
    for i in range(300):
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(tmp_path / f"{i}.png")
    paths = sorted(tmp_path.glob("*.png"))
    before = len(os.listdir("/proc/self/fd"))
    kept = decode_all(paths, final=False, policy=CachePolicy(spill_root=tmp_path), workers=1)
    assert len(kept) == 300 and len(os.listdir("/proc/self/fd")) < before + 50


KILLED = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from finetune_samples import tiny_images
from training.decoded import CachePolicy, decode_all
images = tiny_images(Path({root!r}) / "images", 6)
kept = decode_all(images.paths, final=False, policy=CachePolicy(0, Path({root!r}) / "spill"), workers=0)
print(kept.folder, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_run_leaves_no_data_and_the_next_run_removes_its_folder(tmp_path: Path) -> None:
    script = KILLED.format(tests=str(Path(__file__).parents[1]), root=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    left = Path(done.stdout.strip())
    assert left.is_dir() and list(left.iterdir()) == []  # no data: the file went with the process
    mine = run_folder(tmp_path / "spill")
    assert not left.exists() and mine.exists() and str(os.getpid()) in mine.name


def test_the_loaders_workers_live_across_epochs(images: Images, tmp_path: Path) -> None:
    kept = decode_all(images.paths, final=False, policy=CachePolicy(spill_root=tmp_path), workers=0)
    sampler = EpochSampler(len(images), 4, seed=0)
    batches = loader(
        images, sampler, AugmentPolicy(), seed=0, workers=1, device=torch.device("cpu"), decoded=kept
    )
    pids = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        assert sum(len(x) for x, _, _ in batches) == 8
        pids.append([w.pid for w in batches._iterator._workers])  # type: ignore[attr-defined]
    assert pids[0] == pids[1] and len(pids[0]) == 1
