"""Keep stdout for a command's result: what libraries print while it runs goes to stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout inside the block to stderr, restored after.

    At the file-descriptor level (fd 1 becomes a copy of fd 2), not only sys.stdout: Ray Tune prints its
    progress tables from threads, C code and child processes, which write to fd 1 directly or inherit
    it when started, so `lightbox train > result.json` would otherwise hold them before the JSON.
    sys.stdout is pointed at sys.stderr as well, for a caller that replaced it (a test runner)."""
    sys.stdout.flush()  # what the command printed before belongs to stdout
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()  # Python-buffered progress goes out to stderr, not into the result
        os.dup2(saved, 1)
        os.close(saved)
