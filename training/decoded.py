"""Each fine-tuning image decoded once per run, its pixels kept for every epoch after the first.

Decoding a photo (the reduced-size JPEG decode, EXIF orientation, mode conversion: ``lightbox.imaging``)
gives the same pixels every epoch and costs more than the augmentation after it, on the cores the
forward/backward pass needs. ``decode_all`` decodes every image once (in the DataLoader's workers when
there are any) into a ``DecodedImages``; the epochs' workers then only augment and convert.

What is kept:
- training images (augmented each epoch): the decoded image, box-reduced by whole factors while each
  side stays >= ``MIN_SIDE`` (twice the model input). That box average is the step Pillow's own
  ``reducing_gap`` takes before its one resample to the model input, so augmentation still resamples
  once (a second fractional resample softens the image: the ``blurry`` label; training/augment.py).
  Most photos need no reduction: the reduced-size JPEG decode already brings a camera JPEG under
  2 x ``MIN_SIDE`` (4000x3000 decodes at 500x375, 0.56 MB kept); their augmented pixels are exactly
  those of decoding every epoch.
- evaluation images (never augmented): the model input itself, [3, 224, 224].

Memory is bounded: images go to memory until ``CachePolicy.memory_bytes`` are used, the rest to one file
in a folder of this run under ``spill_root`` (read back through a read-only memory map, shared with the
forked workers). The file is unlinked as soon as it is created, so a killed run leaves no data behind;
its empty folder (named by host and pid) is removed by the next run that spills there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lightbox.imaging import MODEL_INPUT_SIZE, decode_image, to_model_input
from lightbox.owner import process_alive
from training.augment import MAX_CROP, MAX_RESIZE

# The smallest side a kept training image is box-reduced to: twice the model input, the reducing gap
# ``to_model_input`` itself keeps (Pillow box-reduces by whole factors until the image is within 2x the
# target, then resamples once). Measured: reducing to 256 instead (~1.1x) moved the noise statistic 0.026
# on a 512-pixel photo, past tests/unit/test_augment.py's bound (0.025).
MIN_SIDE = 2 * MODEL_INPUT_SIZE
assert MIN_SIDE * (1 - MAX_CROP) * (1 - MAX_RESIZE) >= MODEL_INPUT_SIZE  # a crop is never enlarged
RUN_PREFIX = "run-"


@dataclass(frozen=True)
class CachePolicy:
    """How much of the decoded images a process keeps in memory, and where the rest goes (None: the
    system's temporary folder, which may itself be memory: tmpfs)."""

    memory_bytes: int = 2 << 30
    spill_root: Path | None = None

    def __post_init__(self) -> None:
        if self.memory_bytes < 0:
            raise ValueError(f"the cache's memory budget must be >= 0 bytes, got {self.memory_bytes}")


def reduce_for_cache(img: Image.Image) -> np.ndarray:
    """A decoded RGB image -> the HWC uint8 pixels kept for augmentation (box-reduced by whole factors
    while each side stays >= MIN_SIDE; unchanged while no side reaches 2 x MIN_SIDE)."""
    w, h = img.size
    factor = (max(1, w // MIN_SIDE), max(1, h // MIN_SIDE))
    if factor != (1, 1):
        img = img.reduce(factor)
    return np.array(img.convert("RGB"), dtype=np.uint8)  # writable: it becomes a tensor


class _Decode(Dataset):
    """Index -> the pixels to keep (a worker's share of the one decode pass)."""

    def __init__(self, paths: Sequence[Path], final: bool, max_pixels: int) -> None:
        self.paths, self.final, self.max_pixels = paths, final, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = decode_image(self.paths[i].read_bytes(), max_pixels=self.max_pixels)
        return torch.from_numpy(to_model_input(img) if self.final else reduce_for_cache(img))


class DecodedImages:
    """Kept pixels by index: the first in memory up to the budget, the rest in a mapped, unlinked file."""

    def __init__(self, arrays: Iterable[np.ndarray], policy: CachePolicy) -> None:
        self._memory: list[np.ndarray | None] = []
        self._spilled: dict[int, tuple[int, tuple[int, ...]]] = {}  # index -> (offset, shape)
        self._map: np.ndarray | None = None
        self.folder: Path | None = None
        self.memory_bytes = self.spilled_bytes = 0
        try:
            with contextlib.ExitStack() as files:  # the spill file closes here; the map keeps its own fd
                spill: IO[bytes] | None = None
                for i, a in enumerate(arrays):
                    a = np.ascontiguousarray(a, dtype=np.uint8)
                    if self.memory_bytes + a.nbytes <= policy.memory_bytes:
                        self._memory.append(a)
                        self.memory_bytes += a.nbytes
                        continue
                    if spill is None:
                        self.folder = run_folder(policy.spill_root)
                        # Unlinked at once (POSIX): the data lives while this process or a forked worker
                        # maps it, and a SIGKILL frees it with nothing to clean up.
                        spill = files.enter_context(tempfile.TemporaryFile(dir=self.folder))
                    self._spilled[i] = (self.spilled_bytes, a.shape)
                    self._memory.append(None)
                    spill.write(a.tobytes())
                    self.spilled_bytes += a.nbytes
                if spill is not None:
                    spill.flush()
                    self._map = np.memmap(spill, dtype=np.uint8, mode="r", shape=(self.spilled_bytes,))
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self._memory)

    def __getitem__(self, i: int) -> np.ndarray:
        kept = self._memory[i]
        if kept is not None:
            return kept
        offset, shape = self._spilled[i]
        assert self._map is not None
        return self._map[offset : offset + int(np.prod(shape))].reshape(shape)

    def close(self) -> None:
        """Drop the map and this run's spill folder (the workers' own maps go with them)."""
        self._map = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def run_folder(root: Path | None) -> Path:
    """A new folder for this process's spill file under ``root``, after removing those of processes on
    this host that are gone (a killed run's: empty, its file was unlinked)."""
    base = Path(root) if root is not None else Path(tempfile.gettempdir()) / "lightbox-decoded"
    base.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().replace("-", "_")
    for old in base.glob(f"{RUN_PREFIX}{host}-*"):
        pid = old.name.removeprefix(f"{RUN_PREFIX}{host}-").split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{host}-{os.getpid()}-", dir=base))


def decode_all(
    paths: Sequence[Path], *, final: bool, policy: CachePolicy, workers: int, max_pixels: int = 40_000_000
) -> DecodedImages:
    """Decode every image once, in order (``workers`` processes in parallel), into a DecodedImages:
    ``final`` keeps the model input (evaluation), else the reduced image augmentation starts from."""
    batches = DataLoader(
        _Decode(paths, final, max_pixels),
        batch_size=None,  # one image at a time: sizes differ
        num_workers=workers,
        prefetch_factor=4 if workers > 0 else None,
    )
    # A copy of each: a tensor from a worker lives in shared memory that holds a file descriptor open as
    # long as it does (torch's sharing strategy), and a run keeps thousands of images.
    return DecodedImages((t.numpy().copy() for t in batches), policy)
