"""The trainer's side of async rollouts: start the worker, push and verify weights, take batches in order, save
what is in flight, and turn every worker failure into one line (:class:`grpo.errors.TrainingError`).

Weights travel through S = max(1, max_staleness) shared-memory slots: version v goes to slot v % S once the
worker has loaded version v - S from it. The worker loads every version in order, one per batch, and is at most
max_staleness batches ahead, so in steady state the trainer never waits for a slot.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from grpo.accelerator import full_weights
from grpo.batch import StepBatch
from grpo.checkpoint import load_rank_file
from grpo.errors import TrainingError
from grpo.weight_sync import fingerprint, first_mismatch, shared_slots, synced_tensors, write_slot
from grpo.worker.process import WorkerSetup, main
from grpo.worker.wire import batch_from_payload, from_bytes

POLL_S = 0.05  # how often a waiting trainer checks that the worker is alive: failures are noticed within this
START_S = 600.0  # the worker's start-up (imports, loading the model, a vLLM engine) may take this long


def worker_device(setting: str, trainer_device: torch.device, local_rank: int, local_world: int) -> str:
    """Where the worker's model lives. ``auto``: the CPU on a CPU run; with GPUs the first one after the
    trainers' (cuda:1 for a single trainer on a 2-GPU machine), or the trainer's own when there is none to spare."""
    if setting != "auto":
        return setting
    if trainer_device.type != "cuda":
        return "cpu"
    spare = local_rank + local_world
    return f"cuda:{spare}" if spare < torch.cuda.device_count() else str(trainer_device)


def rollouts_for_run(cfg: Any, accelerator: Any, model: torch.nn.Module, prompts_per_step: int) -> AsyncRollouts:
    """This rank's rollout worker handle (started by the trainer once a resume is known). ``model``: the prepared
    (possibly sharded) policy: its full weights give the names and shapes of what is synced."""
    device = worker_device(cfg.rollout_device, accelerator.device, accelerator.local_process_index,
                           int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    with full_weights(model, accelerator) as full:
        return AsyncRollouts(cfg, accelerator.process_index, device, prompts_per_step, full)


def parse_fault(value: str | None) -> tuple[str, int] | None:
    """``GRPO_ZERO_WORKER_FAULT`` (``kind:n``, the fault tests' hook) -> (kind, n), or None."""
    if not value:
        return None
    kind, _, n = value.partition(":")
    return kind, int(n)


class AsyncRollouts:
    """The handle on one rank's rollout worker (grpo/worker/process.py)."""

    def __init__(self, cfg: Any, rank: int, device: str, prompts_per_step: int, model: torch.nn.Module):
        """Args: cfg: the run's config; rank: this trainer's rank; device: the worker's device;
        prompts_per_step: B; model: the unwrapped trainable model (names and shapes of what is synced)."""
        self.cfg, self.rank, self.device, self.prompts_per_step = cfg, rank, device, prompts_per_step
        self.staleness = cfg.max_staleness
        self.slots = shared_slots(synced_tensors(model), max(1, self.staleness))
        self.proc: Any = None
        self.conn: Any = None
        self.ready: dict[int, dict] = {}  # batch step -> payload, received and not yet taken
        self.arrived: dict[int, float] = {}  # batch step -> when it arrived (the worker then needs the next weights)
        self.expected: dict[int, dict[str, str]] = {}  # weights version -> the trainer's fingerprints
        self.written: dict[int, float] = {}  # version -> when it was written, until the worker has loaded it
        self.newest_loaded = -1  # the worker loads versions in order, one per batch: the newest verified one
        self.started = False  # the worker has built its model and backend
        self.stream_state: dict | None = None  # the worker's data position after the last batch taken (or resumed)
        self.resumed: dict[int, dict] = {}  # batches a checkpoint held in flight, by step
        self.last_load_s = 0.0  # the worker's load of the newest verified version
        self.start_version = 0
        self.first_batch = 1
        self.last_message = time.monotonic()

    # --- lifecycle ------------------------------------------------------------------------------------------

    def restore(self, checkpoint: Path, rank: int, stream_state: dict) -> None:
        """Resuming from ``checkpoint``: take the batches it held in flight and the data position after them."""
        saved = load_rank_file(checkpoint, "in_flight", rank) or {}
        self.resumed = {int(k): v for k, v in saved.items()}
        self.stream_state = stream_state

    def start(self, model: torch.nn.Module, start_version: int) -> None:
        """Write the starting weights (after step ``start_version``), spawn the worker (it builds its model while the
        trainer evaluates); it samples from the batch after those a resumed checkpoint held in flight."""
        first_batch = start_version + 1 + len(self.resumed)
        self.start_version, self.first_batch = start_version, first_batch
        self.ready.update(self.resumed)
        stream_state = self.stream_state
        self._write(start_version, model, changed=True)
        ctx = torch.multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        setup = WorkerSetup(self.cfg, self.rank, self.device, self.cfg.rollout_threads, self.slots, first_batch,
                            start_version, stream_state, self.prompts_per_step, os.getpid(),
                            parse_fault(os.environ.get("GRPO_ZERO_WORKER_FAULT")))
        self.proc = ctx.Process(target=main, args=(child, setup), daemon=True, name=f"grpo-rollout-worker-{self.rank}")
        self.proc.start()
        child.close()
        self.last_message = time.monotonic()
        self.conn.send(("weights", start_version, False))

    def close(self) -> None:
        """Stop the worker and wait for it (kill it after 10 s); idempotent."""
        if self.proc is None:
            return
        try:
            if self.proc.is_alive():
                self.conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()
        self.proc = None

    # --- the step -----------------------------------------------------------------------------------------

    def take(self, step: int) -> tuple[StepBatch, dict[str, float]]:
        """Batch ``step`` (waiting for it when late). -> (the scored batch of N, its round metrics plus
        ``async/*``)."""
        t0 = time.perf_counter()
        self._wait(lambda: step in self.ready, f"batch {step}", self.cfg.rollout_timeout_s)
        payload = self.ready.pop(step)
        version = int(payload["version"])
        metrics = {**payload["metrics"], "async/trainer_wait_s": time.perf_counter() - t0,
                   "async/worker_wait_s": float(payload["worker_wait_s"]),
                   "async/staleness": float(step - 1 - version)}
        for k in [k for k in self.arrived if k < step - 1]:
            del self.arrived[k]
        self.stream_state = json.loads(payload["stream"])
        return batch_from_payload(payload), metrics

    def push(self, version: int, model: torch.nn.Module, changed: bool) -> dict[str, float]:
        """Send the weights after step ``version`` (``changed`` False: the step left them as they were, nothing is
        copied). Waits only if the worker has not yet loaded the version that last used this slot.
        -> ``weight_sync/bytes`` (copied now) and ``weight_sync/seconds`` (this copy plus the worker's load and check
        of the newest version it has loaded)."""
        if self._first_user(version) > self.cfg.max_steps:
            # no batch of this run samples from these weights (the last max_staleness steps)
            return {"weight_sync/bytes": 0.0, "weight_sync/seconds": 0.0}
        old = version - len(self.slots)
        if old >= self.start_version and changed:
            self._wait(lambda: self.newest_loaded >= old, f"the worker to load the weights after step {old}",
                       self.cfg.weight_sync_timeout_s)
        size, seconds = self._write(version, model, changed)
        self._send(("weights", version, not changed), f"the weights after step {version}")
        return {"weight_sync/bytes": float(size), "weight_sync/seconds": seconds + self.last_load_s}

    def checkpoint(self, step: int) -> tuple[dict | None, dict[str, Any]]:
        """After step ``step``: what a checkpoint holds for the worker, waiting for it: the batches sampled for later
        steps (step+1 .. step+max_staleness, at most max_steps) and the data position after them.
        -> (data position, ``rank_files`` for :func:`grpo.checkpoint.save_checkpoint`)."""
        last = min(step + self.staleness, self.cfg.max_steps)
        want = range(step + 1, last + 1)
        self._wait(lambda: all(k in self.ready for k in want), f"batches {step + 1}-{last} to checkpoint",
                   self.cfg.rollout_timeout_s)
        stream = json.loads(self.ready[last]["stream"]) if last > step else self.stream_state
        return stream, {"in_flight": {str(k): self.ready[k] for k in want}}

    # --- internals ----------------------------------------------------------------------------------------

    def _send(self, msg: tuple, what: str) -> None:
        """Send to the worker; a closed pipe means it died or failed: say how, in one line."""
        try:
            self.conn.send(msg)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            self._wait(lambda: False, f"it to take {what}", self.cfg.rollout_timeout_s)  # raises with the reason

    def _write(self, version: int, model: torch.nn.Module, changed: bool) -> tuple[int, float]:
        """Copy the weights after step ``version`` into their slot (or not, when unchanged) and note their
        fingerprints, which the worker's must match. -> (bytes, seconds)."""
        if changed or version - 1 not in self.expected:
            tensors = synced_tensors(model)
            size, seconds = write_slot(self.slots[version % len(self.slots)], tensors)
            self.expected[version] = fingerprint(tensors)
        else:
            size, seconds = 0, 0.0
            self.expected[version] = self.expected[version - 1]
        self.written[version] = time.monotonic()
        for v in [v for v in self.expected if v < version - len(self.slots) - 1]:
            self.expected.pop(v, None)
        return size, seconds

    def _wait(self, done: Any, what: str, timeout: float) -> None:
        """Handle the worker's messages until ``done()``; one-line TrainingError when the worker died, reported an
        error, sent nothing for ``timeout`` seconds, or failed a weight check."""
        start = time.monotonic()
        while not done():
            try:
                if self.conn.poll(POLL_S):
                    self._handle(self.conn.recv())
                    continue
            except (EOFError, ConnectionResetError):  # the worker's end closed: it is exiting
                self.proc.join(5)
            if not self.proc.is_alive():
                with contextlib.suppress(EOFError, OSError):
                    while self.conn.poll():  # its last words, if any
                        self._handle(self.conn.recv())
                raise TrainingError(f"the rollout worker {_death(self.proc.exitcode)} while the trainer waited for "
                                    f"{what}; rerun the same command to resume from the last checkpoint")
            now = time.monotonic()
            if now - max(start, self.last_message) > (timeout if self.started else max(timeout, START_S)):
                raise TrainingError(f"the rollout worker sent nothing for {timeout:.0f} s while the trainer waited for "
                                    f"{what} (a hung backend or reward?); raise rollout_timeout_s if sampling a batch "
                                    "really takes this long, or rerun to resume from the last checkpoint")
            self._check_sync_deadlines(now)

    def _handle(self, msg: tuple) -> None:
        """One message from the worker."""
        self.last_message = time.monotonic()
        kind = msg[0]
        if kind == "ready":
            self.started = True
        elif kind == "batch":
            self.ready[int(msg[1])] = from_bytes(msg[2])
            self.arrived[int(msg[1])] = self.last_message
        elif kind == "loaded":
            self._verify(int(msg[1]), msg[2], float(msg[3]))
        elif kind == "error":
            raise TrainingError(f"the rollout worker failed: {msg[1]}; rerun the same command to resume from the "
                                "last checkpoint")

    def _verify(self, version: int, got: dict[str, str], load_s: float) -> None:
        """The worker loaded ``version``: its fingerprints must equal the trainer's."""
        bad = first_mismatch(self.expected[version], got)
        if bad is not None:
            raise TrainingError(f"weight sync after step {version}: the rollout worker's '{bad}' differs from the "
                                f"trainer's (fingerprint {got.get(bad)} != {self.expected[version].get(bad)}); it would "
                                "sample from weights nobody trained. Rerun to resume from the last checkpoint")
        self.written.pop(version)
        self.newest_loaded = version
        self.last_load_s = load_s

    def _first_user(self, version: int) -> int:
        """The first batch sampled from weights ``version``."""
        return next_batch_using(version, self.staleness, self.start_version, self.first_batch)

    def _check_sync_deadlines(self, now: float) -> None:
        """A version the worker needs (it has sent the batch before the first one that version samples, or that
        batch is the session's first) must be loaded within ``weight_sync_timeout_s``."""
        for version, written_at in self.written.items():
            before = self._first_user(version) - 1
            needed_at = written_at if before < self.first_batch else max(written_at, self.arrived.get(before, now))
            if now - needed_at > self.cfg.weight_sync_timeout_s:
                raise TrainingError(f"weight sync after step {version} took longer than weight_sync_timeout_s = "
                                    f"{self.cfg.weight_sync_timeout_s:g} s: the rollout worker did not load it; rerun to "
                                    "resume from the last checkpoint")


def next_batch_using(version: int, staleness: int, start_version: int, first_batch: int) -> int:
    """The first batch sampled from weights ``version`` (the inverse of :func:`needed_version`): the session's
    first batch for its starting weights, else batch version + 1 + staleness."""
    return first_batch if version == start_version else version + 1 + staleness


def _death(exitcode: int | None) -> str:
    """How a process ended, in words."""
    import signal

    if exitcode is None:
        return "stopped responding"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"
