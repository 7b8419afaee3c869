"""The rollout worker process: its own policy copy, backend, rewards and data stream; it samples and scores batches
in the order of the schedule and sends them to the trainer.

Messages (a ``multiprocessing`` pipe; batches as bytes, :mod:`grpo.worker.wire`):

- trainer -> worker: ``("weights", v, same)``: the weights after step v are in shared slot v % S (``same``: step v
  changed nothing, keep the current ones); ``("stop",)``.
- worker -> trainer: ``("ready", pid)``; ``("loaded", v, fingerprints, seconds)`` after loading version v;
  ``("batch", step, bytes)``; ``("error", line)`` before it exits on any exception.

Batch k is sampled from version ``max(start_version, k - 1 - max_staleness)`` with the seed of batch k (and the
worker's rank), so its content does not depend on timing. The worker ignores SIGINT and SIGTERM (the trainer stops
it after saving what is in flight) and exits when the trainer's process is gone.

Testing hook: ``GRPO_ZERO_WORKER_FAULT=<kind>:<n>`` makes the worker misbehave on purpose, for the fault tests:
``raise:<k>`` raises before sampling batch k, ``hang:<k>`` sleeps forever there, ``corrupt:<v>`` changes one weight
after loading version v (the fingerprint check must catch it).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class WorkerSetup:
    """Everything the worker builds itself from (pickled to the spawned process).

    Attributes:
        cfg: the run's checked config (after preflight: smoke stand-ins and data files already resolved).
        rank: the trainer rank this worker samples for (seeds and data stream are per rank).
        device: torch device string for the worker's model.
        threads: torch threads on CPU.
        slots: shared-memory weight slots (:func:`grpo.weight_sync.shared_slots`), S = len(slots).
        first_batch: the first batch to sample (1, or after a resume the one after those in flight).
        start_version: the weights it starts from (0, or the resumed step).
        stream_state: the data stream's position to start from (None: from the beginning).
        prompts_per_step: B.
        parent_pid: the trainer's pid; the worker exits when it is gone.
    """

    cfg: Any
    rank: int
    device: str
    threads: int
    slots: list[dict[str, torch.Tensor]]
    first_batch: int
    start_version: int
    stream_state: dict | None
    prompts_per_step: int
    parent_pid: int
    fault: tuple[str, int] | None = field(default=None)


def batch_seed(seed: int, step: int, rank: int) -> int:
    """The seed of batch ``step`` on ``rank``: a fixed function of the three, so a batch's samples never depend on
    which batches came before it in this process (a resumed worker draws what the uninterrupted one drew)."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % (2**31 - 1)


def needed_version(step: int, staleness: int, start_version: int) -> int:
    """The weights version that samples batch ``step``: the weights after step ``step - 1 - staleness``, never older
    than the weights this session started from."""
    return max(start_version, step - 1 - staleness)


def main(conn: Any, setup: WorkerSetup) -> None:
    """The worker process's entry point: build, then sample batches until told to stop. Any exception becomes one
    ``("error", line)`` message before the process exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole process group: the trainer decides
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _exit_with_parent(setup.parent_pid)
    worker = None
    try:
        worker = _Worker(setup, conn)
        conn.send(("ready", os.getpid()))
        worker.loop()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the trainer is gone
    except BaseException as e:  # noqa: BLE001 - every failure must reach the trainer as one line
        line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        try:
            conn.send(("error", f"{type(e).__name__}: {line}"[:500]))
        except (OSError, ValueError):
            pass
    finally:
        if worker is not None:
            worker.backend.close()  # the toolbox's sandbox processes, when the run has tools
        conn.close()


def _exit_with_parent(parent_pid: int) -> None:
    """A daemon thread that ends the process when the trainer dies (even by kill -9): no orphan keeps sampling."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


class _Worker:
    """The worker's state: model, backend, rewards, stream, and the weights version it holds."""

    def __init__(self, setup: WorkerSetup, conn: Any):
        from grpo.model import load_policy, load_tokenizer, resolve_dtype
        from grpo.paths import resolve_model_path
        from grpo.precision import plan_for_run
        from grpo.rollout import backend_for_run
        from grpo.tasks import get_task
        from rewards.combine import build_rewards

        self.setup, self.conn, cfg = setup, conn, setup.cfg
        if setup.device == "cpu":
            torch.set_num_threads(setup.threads)
        elif setup.device.startswith("cuda"):
            torch.cuda.set_device(torch.device(setup.device))
        self.tokenizer = load_tokenizer(cfg)
        self.task = get_task(cfg.task, **cfg.task_kwargs)
        self.stream = self.task.train_stream(cfg.seed * 1000 + setup.rank, self.tokenizer)
        if setup.stream_state is not None:
            self.stream.load_state_dict(setup.stream_state)
        self.rewards = build_rewards(cfg.rewards)
        self.model = load_policy(cfg).to(setup.device)
        params = dict(self.model.named_parameters())
        missing = [n for n in setup.slots[0] if n not in params]
        if missing:
            raise RuntimeError(f"the worker's model has no parameter {missing[0]!r} that the trainer sends")
        self.params = {n: params[n] for n in setup.slots[0]}
        precision = plan_for_run(resolve_dtype(cfg.dtype, cfg.use_peft), cfg.use_peft)
        self.backend = backend_for_run(cfg, self.tokenizer, resolve_model_path(cfg.model_name_or_path),
                                       precision.decode_dtype)
        self.version: int | None = None
        self.announced: dict[int, bool] = {}  # version -> "same as the one before"
        self.stopping = False

    def loop(self) -> None:
        """Sample batches first_batch, first_batch + 1, ... up to max_steps, each from its scheduled weights."""
        s, cfg = self.setup, self.setup.cfg
        step = s.first_batch
        while not self.stopping:
            if step > cfg.max_steps:  # all batches sent: wait for the trainer's stop
                self._receive(block=True)
                continue
            need = needed_version(step, cfg.max_staleness, s.start_version)
            t0 = time.perf_counter()
            while need not in self.announced and not self.stopping:
                self._receive(block=True)
            if self.stopping:
                break
            wait_s = time.perf_counter() - t0
            self._load(need)
            self._fault("raise", step) or self._fault("hang", step)
            self._sample(step, wait_s)
            self._receive(block=False)
            step += 1

    def _receive(self, block: bool) -> None:
        """Handle the trainer's messages (all waiting ones; with ``block`` at least one)."""
        while block or self.conn.poll():
            msg = self.conn.recv()
            block = False
            if msg[0] == "weights":
                self.announced[int(msg[1])] = bool(msg[2])
            elif msg[0] == "stop":
                self.stopping = True
                return

    @torch.no_grad()
    def _load(self, version: int) -> None:
        """Hold weights ``version``: read its slot (or keep the current weights when the step changed nothing),
        then send their fingerprints for the trainer to check."""
        from grpo.weight_sync import fingerprint, read_slot

        if self.version == version:
            return
        seconds = 0.0
        if not (self.announced[version] and self.version is not None):
            seconds = read_slot(self.setup.slots[version % len(self.setup.slots)], self.params)
            self.backend.sync_weights(self.model)
        self.version = version
        if self._fault("corrupt", version):
            next(iter(self.params.values())).view(-1)[0] += 1.0
        self.conn.send(("loaded", version, fingerprint(self.params), seconds))
        for old in [v for v in self.announced if v < version]:
            del self.announced[old]

    def _sample(self, step: int, wait_s: float) -> None:
        """Sample and score batch ``step`` (DAPO rounds decided by this rank alone) and send it."""
        from accelerate.utils import set_seed

        from grpo.collect import collect, score_round, trainer_state
        from grpo.worker.wire import batch_payload, to_bytes

        cfg, G = self.setup.cfg, self.setup.cfg.num_generations
        set_seed(batch_seed(cfg.seed, step, self.setup.rank))
        state = trainer_state(self.stream, int(self.version), cfg.max_steps)

        def one_round() -> tuple[Any, dict[str, float]]:
            t0 = time.perf_counter()
            rows = self.stream.take(self.setup.prompts_per_step)
            rollout = self.backend.generate(self.model, [r["prompt"] for r in rows], G)
            rollout_s = time.perf_counter() - t0
            batch, round_metrics = score_round(rollout, rows, G, self.rewards, self.task, state)
            return batch, {"time/rollout_s": rollout_s, **round_metrics}

        # The worker has no process group: each rank's worker decides its own dynamic-sampling rounds.
        batch, metrics = collect(one_round, dynamic=cfg.dynamic_sampling, max_rounds=cfg.max_sampling_rounds,
                                 pad_token_id=self.tokenizer.pad_token_id, any_rank_needs_more=lambda need: need)
        payload = batch_payload(batch, metrics, step, int(self.version), self.stream.state_dict(), wait_s)
        self.conn.send(("batch", step, to_bytes(payload)))

    def _fault(self, kind: str, n: int) -> bool:
        """The testing hook (module docstring): act when ``GRPO_ZERO_WORKER_FAULT`` is ``kind:n``."""
        if self.setup.fault != (kind, n):
            return False
        if kind == "raise":
            raise RuntimeError(f"injected fault before batch {n}")
        if kind == "hang":
            while True:
                time.sleep(3600)
        return True
