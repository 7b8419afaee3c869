"""Stopping: on request (SIGINT/SIGTERM finish the current step, save a checkpoint and exit 0; a second signal
exits at once; all ranks agree on the step, so every rank saves the same checkpoint) and after too many
non-finite steps in a row.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from grpo.dist import any_rank
from grpo.errors import TrainingError


class StopRequest:
    """Set by SIGINT/SIGTERM while :meth:`installed`; :meth:`agreed` tells every rank whether any rank was signalled."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            print(f"\nsecond {signal.Signals(signum).name}: exiting now without saving", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.requested = True
        print(f"\n{signal.Signals(signum).name} received: finishing this step, saving a checkpoint, then exiting "
              "(send it again to exit at once)", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Install the handlers for the duration of the loop (main thread only), then restore the old ones."""
        sigs = (signal.SIGINT, signal.SIGTERM)
        try:
            old = {s: signal.signal(s, self._handle) for s in sigs}
        except ValueError:  # not the main thread: leave signals alone
            old = {}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def agreed(self, accelerator: Any) -> bool:
        """True on every rank if any rank was signalled (so all ranks save and stop at the same step)."""
        return any_rank(accelerator, self.requested)


def count_bad_steps(bad_steps: int, metrics: dict[str, float], max_bad_steps: int, step: int) -> int:
    """Steps in a row whose update was dropped as non-finite, after this step's ``metrics``.

    Raises:
        TrainingError: ``max_bad_steps`` (> 0) such steps in a row: one line saying what to do.
    """
    bad_steps = bad_steps + 1 if metrics.get("skipped_nonfinite", 0) > 0 else 0
    if max_bad_steps and bad_steps >= max_bad_steps:
        raise TrainingError(f"stopping at step {step}: {bad_steps} steps in a row had a non-finite loss or gradient "
                            "and were skipped; lower learning_rate, check the rewards, or resume from the last checkpoint")
    return bad_steps
