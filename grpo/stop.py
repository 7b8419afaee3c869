"""Stopping on request: SIGINT/SIGTERM finish the current step, save a checkpoint and exit 0.

A second signal exits at once. All ranks agree on stopping at the same step (one all-reduce), so every rank
saves the same checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import torch


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
        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        return accelerator.reduce(flag, reduction="sum").item() > 0
