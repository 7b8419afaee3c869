"""The GRPO loop: rollout -> rewards -> advantages -> policy updates -> metrics -> eval -> checkpoint.

Everything runs through ``accelerate`` so one code path serves CPU, one GPU, DDP, DeepSpeed and FSDP.
Each process samples its own prompts and keeps a prompt's G completions together, so group advantages
need no communication; what crosses ranks is listed in :mod:`grpo.dist` (metrics, the DAPO token count, the
skip, stop and "another round?" decisions, the batch std for ``scale_rewards: batch``).
Data flows down: the loop hands a :class:`grpo.batch.StepBatch` to the pieces, which never call back. The math
is in :mod:`grpo.core`, scoring (log-probs, micro-batching) in :mod:`grpo.scoring`, the sampler/trainer
correction in :mod:`grpo.correction`, batch collection and dynamic sampling in :mod:`grpo.collect`, metrics in
:mod:`grpo.metrics`, the sinks in :mod:`grpo.logs`. With ``async_rollouts`` a worker process samples and scores the
batches (:mod:`grpo.worker`) and ``collect`` takes them from it in a fixed order.

Notation: B prompts per process, G = group size (``num_generations``), N = B x G sequences, P prompt tokens,
T completion tokens.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch import Tensor

from grpo import core, metrics, scoring
from grpo.accelerator import build_optimizer, full_weights, make_accelerator, optimizer_step
from grpo.advantages import advantages_over_ranks
from grpo.batch import RolloutBatch, StepBatch, UpdateStats
from grpo.checkpoint import (
    load_checkpoint,
    resolve_resume,
    restore_logs,
    save_checkpoint,
    write_errors,
)
from grpo.collect import collect, score_round, trainer_state
from grpo.config import GRPOConfig, correction_options, loss_options
from grpo.correction import correct, correction_enabled
from grpo.dist import any_rank, gather_records, sum_over_ranks, weights_sharded
from grpo.evaluate import eval_options, evaluate
from grpo.logs import MetricsLogger, completion_records, tracker_names
from grpo.model import (
    load_policy,
    load_reference,
    load_tokenizer,
    reference_context,
    resolve_dtype,
    save_final,
)
from grpo.paths import resolve_model_path
from grpo.precision import decode_copy_dtype, plan_for_run
from grpo.rollout import backend_for_run
from grpo.run_record import last_logged_eval, logged_eval, logged_step_seconds
from grpo.stop import StopRequest, count_bad_steps
from grpo.tasks import Task, get_task
from grpo.worker.client import rollouts_for_run
from rewards.calling import TrainerState
from rewards.combine import build_rewards


class Trainer:
    """GRPO on a causal LM with rule rewards. Build with a validated :class:`GRPOConfig`, then ``train()``."""

    def __init__(self, cfg: GRPOConfig, task: Task | None = None):
        """Args: cfg: a checked config; task: the task built by preflight (built here from ``cfg`` when None)."""
        self.cfg = cfg
        self.prompts_per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps // cfg.num_generations
        # Length buckets are extra accumulation micro-steps: one optimizer step still covers the whole batch.
        # A bucket holds whole groups, so there are at most as many micro-steps as prompts.
        self.micro_steps = min(cfg.gradient_accumulation_steps * cfg.update_buckets, self.prompts_per_step)
        # On CUDA, float32 weights without mixed precision get bf16 autocast, or a line saying they run in fp32.
        self.precision = plan_for_run(resolve_dtype(cfg.dtype, cfg.use_peft), cfg.use_peft)
        self.accelerator = acc = make_accelerator(cfg, self.micro_steps, tracker_names(cfg), self.precision)
        set_seed(cfg.seed, device_specific=True)  # each rank samples differently, reproducibly
        self.rewards = build_rewards(cfg.rewards)
        self.task = task if task is not None else get_task(cfg.task, **cfg.task_kwargs)
        self.tokenizer = load_tokenizer(cfg)  # chat-template prompts are rendered with the model's tokenizer
        self.stream = self.task.train_stream(cfg.seed * 1000 + acc.process_index, self.tokenizer)
        self.eval_rows = self.task.eval_rows(self.tokenizer)
        model = load_policy(cfg)
        self.ref_model = load_reference(cfg, acc.device)  # None with LoRA: reference_context(model) instead
        self.model, self.optimizer, self.scheduler = acc.prepare(model, *build_optimizer(cfg, model))
        decode_dtype = decode_copy_dtype(self.precision, acc)
        self.backend = backend_for_run(cfg, self.tokenizer, resolve_model_path(cfg.model_name_or_path), decode_dtype)
        self.loss_options = loss_options(cfg)
        self.correction = (correction_options(cfg) if correction_enabled(
            cfg.vllm_importance_sampling_correction, cfg.rollout_backend, decode_dtype is not None,
            cfg.async_rollouts) else None)
        self.scoring = scoring.ScoringOptions(
            temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
            # ZeRO-3 / FSDP shard the lm_head weight: the fused head needs it whole, so it computes all logits there.
            lm_head_chunk_size=0 if weights_sharded(acc) else cfg.lm_head_chunk_size,
            # Gradient checkpointing turns the KV cache off in training, which prompt sharing needs.
            share_prompts=cfg.share_prompt_forward and not cfg.gradient_checkpointing)
        self.logger = MetricsLogger(cfg, acc)
        self.rollouts = rollouts_for_run(cfg, acc, self.model, self.prompts_per_step) if cfg.async_rollouts else None
        self.bad_steps = 0  # consecutive steps whose update was dropped as non-finite
        self.global_step = 0  # steps finished, for the rewards' trainer_state

    # --- one step ----------------------------------------------------------------------------------------

    def sample_round(self) -> tuple[StepBatch, dict[str, float]]:
        """Sample B prompts, G completions each, and score them. -> batch of N with rewards, round metrics."""
        t0, G = time.perf_counter(), self.cfg.num_generations
        rows = self.stream.take(self.prompts_per_step)
        with full_weights(self.model, self.accelerator) as model:  # FSDP: gathered once, not per decoded token
            rollout = self.backend.generate(model, [r["prompt"] for r in rows], G)
        rollout_s = time.perf_counter() - t0
        batch, round_metrics = score_round(rollout, rows, G, self.rewards, self.task, self.reward_state())
        return batch, {"time/rollout_s": rollout_s, **round_metrics}

    def reward_state(self) -> TrainerState:
        """TRL's ``trainer_state`` for the rewards: steps finished, ``max_steps``, epochs of train rows so far."""
        return trainer_state(self.stream, self.global_step, self.cfg.max_steps)

    def collect(self, step: int) -> tuple[StepBatch, dict[str, float]]:
        """Batch ``step`` of N (rewards included), with DAPO dynamic sampling when configured (grpo.collect); with
        async rollouts, taken from the worker, which sampled it from the weights ``max_staleness`` steps back."""
        cfg = self.cfg
        if self.rollouts is not None:
            return self.rollouts.take(step)
        return collect(self.sample_round, dynamic=cfg.dynamic_sampling, max_rounds=cfg.max_sampling_rounds,
                       pad_token_id=self.tokenizer.pad_token_id,
                       any_rank_needs_more=lambda need: any_rank(self.accelerator, need))

    def advantages(self, batch: StepBatch) -> Tensor:
        """Advantages (N,) for this rank's N rewards (``batch`` scaling: std over all ranks, grpo.advantages)."""
        return advantages_over_ranks(self.accelerator, batch.rewards, batch.group_size, self.cfg.scale_rewards,
                                     self.cfg.advantage_estimator)

    def _logprobs(self, model: torch.nn.Module, rows: RolloutBatch, group_size: int,
                  with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """Log-probs (n, T') of the sampled tokens of ``rows`` under ``model`` (and entropy), grpo.scoring."""
        return scoring.completion_logprobs(model, rows, self.scoring, group_size,
                                           inner=self.accelerator.unwrap_model(model), with_entropy=with_entropy)

    def _fixed_logprobs(self, micro: list[RolloutBatch], group_size: int) -> tuple[list | None, list | None]:
        """Old-policy (``num_iterations > 1``) and reference (``beta > 0``) log-probs per micro-batch, no grad."""
        cfg = self.cfg
        old = ref = None
        with torch.no_grad():
            if cfg.num_iterations > 1:  # with one update the sampling policy *is* the current one: ratio = 1
                old = [self._logprobs(self.model, rows, group_size)[0] for rows in micro]
            if cfg.beta > 0:
                if self.ref_model is not None:
                    ref = [self._logprobs(self.ref_model, rows, group_size)[0] for rows in micro]
                else:  # LoRA: the reference is the base model, i.e. the policy with its adapter off
                    with reference_context(self.model):
                        ref = [self._logprobs(self.model, rows, group_size)[0] for rows in micro]
        return old, ref

    def update(self, batch: StepBatch) -> UpdateStats:
        """``num_iterations`` optimizer steps over the batch, each accumulated over length-bucketed micro-batches."""
        cfg, acc, G = self.cfg, self.accelerator, batch.group_size
        r, aggregation = batch.rollout, self.loss_options.aggregation
        mask = loss_mask(r, cfg.mask_truncated_completions)  # (N, T)
        # An aggregation over the whole global batch's tokens (dapo) gets their count per rank: DDP averages ranks.
        normalizer = sum_over_ranks(acc, mask.sum()) / acc.num_processes if aggregation.global_tokens else None
        index = scoring.micro_batches(r.prompt_mask, r.completion_mask, G, self.micro_steps)
        micro = [r.select(idx) for idx in index]
        old, ref = self._fixed_logprobs(micro, G)
        advantages = batch.advantages.to(acc.device)
        stats, loss_metrics, corrections, entropy = UpdateStats(), [], [], [0.0, 0.0]
        self.model.train()
        for it in range(cfg.num_iterations):
            for j, (idx, rows) in enumerate(zip(index, micro)):
                with acc.accumulate(self.model):
                    logprobs, ent = self._logprobs(self.model, rows, G, with_entropy=(it == 0))
                    m = mask[idx][:, : logprobs.size(1)]
                    if ent is not None:
                        entropy[0] += (ent * m).sum().item()
                        entropy[1] += m.sum().item()
                    loss, step_metrics, corr = self._loss(rows, logprobs, m, advantages[idx], None if old is None else
                                                          old[j], None if ref is None else ref[j], normalizer)
                    corrections += [corr] if corr and it == 0 else []
                    share = aggregation.micro_share(idx.numel(), mask.size(0))
                    # accelerate divides by gradient_accumulation_steps in backward(); undo it, our share is exact.
                    acc.backward(loss * share * self.micro_steps)
                    if acc.sync_gradients:
                        norm, ok = self._optimizer_step()
                        stats.grad_norm += norm
                        stats.skipped_nonfinite += not ok
                stats.loss += loss.item() * share / cfg.num_iterations
                loss_metrics.append(step_metrics)
        stats.grad_norm /= cfg.num_iterations
        stats.entropy = entropy[0] / max(entropy[1], 1.0)
        stats.add_loss_metrics(metrics.combine(loss_metrics))  # clip ratios, kl: their reduction is a mean
        stats.sampling = metrics.combine(corrections) if corrections else {}
        self.backend.sync_weights(acc.unwrap_model(self.model))
        return stats

    def _loss(self, rows: RolloutBatch, logprobs: Tensor, mask: Tensor, advantages: Tensor, old: Tensor | None,
              ref: Tensor | None, normalizer: float | None) -> tuple[Tensor, dict[str, float], dict[str, float]]:
        """One micro-batch's policy loss (grpo.core), reweighted by the sampler/trainer correction when it is on.
        logprobs, mask, old, ref (n, T'), advantages (n,) -> (loss, loss metrics, correction metrics or {})."""
        old = logprobs.detach() if old is None else old  # one update per batch: the sampling policy is this one
        weights, corr = None, {}
        if self.correction is not None and rows.sampler_logprobs is not None:
            weights, corr = correct(rows.sampler_logprobs, old, mask, self.correction)
        loss, metrics_ = core.policy_loss(logprobs, old, advantages, mask, self.loss_options, normalizer=normalizer,
                                          ref_logprobs=ref, sampling_weights=weights)
        return loss, metrics_, corr

    def _optimizer_step(self) -> tuple[float, bool]:
        """Clip, then step unless the gradient is not finite (grpo.accelerator.optimizer_step). -> (norm, stepped)."""
        return optimizer_step(self.accelerator, self.model, self.optimizer, self.scheduler, self.cfg.max_grad_norm)

    def step(self, step: int) -> dict[str, float]:
        """One GRPO step; returns this step's metrics (over all ranks)."""
        cfg, acc = self.cfg, self.accelerator
        self.global_step = step - 1  # as TRL's trainer_state while this step's batch is scored
        t0 = time.perf_counter()
        batch, collect_metrics = self.collect(step)
        t2 = time.perf_counter()
        batch.advantages = self.advantages(batch)
        if self.logger.should_log_completions(step):
            records = completion_records(step, batch)
            self.logger.log_completions(gather_records(acc, records, batch.num_groups))
        # All advantages zero (every group agreed) and no KL: the gradient is exactly zero, but Adam's
        # momentum would still move the weights, which damages small models. Skip the update instead.
        any_signal = sum_over_ranks(acc, batch.advantages.abs().sum()) > 0
        stats = self.update(batch) if any_signal or cfg.beta > 0 else UpdateStats.skipped()
        sync = {}
        if self.rollouts is not None:  # the worker samples batch step + 1 + max_staleness from these weights
            with full_weights(self.model, acc) as model:
                sync = self.rollouts.push(step, model, changed=not stats.skipped_update)
        t3 = time.perf_counter()
        r = batch.rollout
        m = metrics.rollout_metrics_over_ranks(acc, batch.rewards, r.model_lengths, r.truncated, batch.per_reward,
                                               r.completions, batch.group_size, cfg.reflection_words,
                                               count_tokens=self._count_tokens)
        m.update(metrics.reduce_over_ranks(acc, {**stats.as_metrics(), **collect_metrics, **sync,
                                                 **metrics.tool_metrics(r)}))
        m.update(self.backend.metrics())  # e.g. compile/shapes with compile_generation
        m["learning_rate"] = self.scheduler.get_last_lr()[0]
        m["time/update_s"], m["time/step_s"] = t3 - t2, t3 - t0
        total_tokens = m["completions/mean_length"] * m["completions/count"]  # all ranks' tokens
        m["throughput/completion_tokens_per_s"] = total_tokens / max(m["time/rollout_s"], 1e-9)
        return m

    def _count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts of ``texts`` in one batched tokenizer call (per-string calls cost ~50 us each)."""
        return [len(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    # --- evaluation --------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Greedy pass@1 on the held-out rows (all ranks take part); eval rewards get the run's kwargs (boxed...)."""
        cfg = self.cfg
        with full_weights(self.model, self.accelerator) as model:
            return evaluate(model, self.backend, self.eval_rows, self.accelerator, cfg.eval_batch_size,
                            cfg.eval_max_completion_length or cfg.max_completion_length, **eval_options(cfg, self.task))

    # --- the loop ----------------------------------------------------------------------------------------

    def train(self) -> dict:
        """Run (or resume) up to ``max_steps`` steps with evals and checkpoints. Returns a summary dict.

        Raises:
            TrainingError: ``max_bad_steps`` steps in a row had a non-finite loss or gradient.
        """
        cfg, acc = self.cfg, self.accelerator
        resume_from = resolve_resume(acc, cfg.output_dir, cfg.resume_from_checkpoint, cfg.overwrite_output_dir)
        self.logger.start()
        start_step, first_eval = self._resume(resume_from) if resume_from is not None else (0, None)
        stop = StopRequest()
        with self.rollout_worker(start_step):  # async: the worker builds its model during the first eval
            if resume_from is None and cfg.eval_steps:
                first_eval = self.evaluate()
                self.logger.log(0, first_eval)
            t_start = time.perf_counter()
            with stop.installed():
                step, last_eval = self._steps(start_step, first_eval, stop)
        if start_step >= cfg.max_steps:
            acc.print(f"nothing to do: {cfg.output_dir} already finished step {start_step}; raise --max_steps to "
                      "continue or pass --overwrite_output_dir true to start again")
        wall = time.perf_counter() - t_start
        if start_step > 0:  # resumed (or already finished): the summary covers the whole run, from its logs
            metrics_path = Path(cfg.output_dir) / "metrics.jsonl"
            wall += logged_step_seconds(metrics_path, start_step)
            if last_eval is first_eval:  # no eval ran in this session
                last_eval = last_logged_eval(metrics_path) or last_eval
        self.backend.close()  # the toolbox's sandbox workers (also closed at exit if the run dies first)
        finished = step >= cfg.max_steps and not stop.requested
        if cfg.save_final_model and finished and start_step < cfg.max_steps:
            with write_errors(f"{cfg.output_dir}/final", cfg.output_dir):  # LoRA: adapter or merged (grpo/model.py)
                save_final(self.model, self.tokenizer, f"{cfg.output_dir}/final", cfg.save_merged, acc)
        summary = {"first_eval": first_eval, "last_eval": last_eval, "wall_s": wall, "steps": step,
                   "resumed_from": str(resume_from) if resume_from else None, "interrupted": stop.requested}
        self.logger.finish(summary)
        return summary

    def _steps(self, start_step: int, last_eval: dict[str, float] | None,
               stop: StopRequest) -> tuple[int, dict[str, float] | None]:
        """Steps start_step + 1 .. max_steps with their evals and checkpoints, until done or stopped by a signal.
        -> (the last step run, the last eval)."""
        cfg, acc = self.cfg, self.accelerator
        step = start_step
        for step in range(start_step + 1, cfg.max_steps + 1):
            m = self.step(step)
            self.logger.log(step, m)
            self.bad_steps = count_bad_steps(self.bad_steps, m, cfg.max_bad_steps, step)
            if cfg.eval_steps and (step % cfg.eval_steps == 0 or step == cfg.max_steps):
                last_eval = self.evaluate()
                self.logger.log(step, last_eval)
            stopping = stop.agreed(acc)
            # save_steps 0 means "only at the end": the last step always saves, so a finished run can resume.
            if (cfg.save_steps and step % cfg.save_steps == 0) or stopping or step == cfg.max_steps:
                path = self.save_checkpoint(step)
            if stopping:
                acc.print(f"stopped by signal after step {step}; checkpoint saved to {path}. "
                          "Rerun the same command to resume.")
                break
        return step, last_eval

    def _resume(self, resume_from: Path) -> tuple[int, dict[str, float] | None]:
        """Load checkpoint ``resume_from`` (model, optimizer, RNG, data position, logs; async: the batches in
        flight, and the worker starts after them). -> (its step, the run's first eval from the logs)."""
        cfg, acc = self.cfg, self.accelerator
        start_step, rank_state = load_checkpoint(acc, resume_from)
        self.backend.mark_stale()  # an engine with its own weights (vllm) must not sample the pre-resume ones
        self.stream.load_state_dict(rank_state["stream"])
        self.bad_steps = rank_state.get("bad_steps", 0)
        if self.rollouts is not None:  # the batches in flight, and the data position after them
            self.rollouts.restore(resume_from, acc.process_index, rank_state["stream"])
        restore_logs(acc, resume_from, cfg.output_dir)
        acc.print(f"resuming from {resume_from} at step {start_step} of {cfg.max_steps}")
        return start_step, logged_eval(Path(cfg.output_dir) / "metrics.jsonl", 0)

    # --- async rollouts (grpo/worker) ---------------------------------------------------------------------

    @contextlib.contextmanager
    def rollout_worker(self, start_step: int) -> Iterator[None]:
        """Async: the worker runs for this session's steps, from the current weights; stopped however they end."""
        if self.rollouts is not None:
            with full_weights(self.model, self.accelerator) as model:
                self.rollouts.start(model, start_step)
        try:
            yield
        finally:
            if self.rollouts is not None:
                self.rollouts.close()

    # --- checkpoints -------------------------------------------------------------------------------------

    def save_checkpoint(self, step: int) -> Path:
        """Atomic ``output_dir/checkpoint-<step>`` with everything exact resume needs (all ranks call this); with
        async rollouts also the batches sampled for later steps and the worker's data position after them."""
        state = {"stream": self.stream.state_dict(), "bad_steps": self.bad_steps}
        files = None
        if self.rollouts is not None:
            state["stream"], files = self.rollouts.checkpoint(step)
        return save_checkpoint(self.accelerator, self.cfg.output_dir, step, state, self.cfg.save_total_limit,
                               self.model, rank_files=files)


def loss_mask(rollout: RolloutBatch, mask_truncated: bool) -> Tensor:
    """The tokens the loss counts. -> (N, T) float: the tokens the model sampled (``completion_mask * (1 -
    tool_mask)``: tool outputs are not the policy's actions), without truncated rows when ``mask_truncated``
    (DAPO: a cut-off answer is not evidence about the policy's answers)."""
    mask = rollout.model_mask.float()
    if mask_truncated:
        mask = mask * (~rollout.truncated).float().unsqueeze(1).to(mask.device)
    return mask
