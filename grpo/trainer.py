"""The GRPO loop: rollout -> rewards -> advantages -> policy updates -> metrics -> eval -> checkpoint.

Everything runs through ``accelerate`` so one code path serves CPU, one GPU, DDP, DeepSpeed and FSDP.
Each process samples its own prompts and keeps a prompt's G completions together, so group advantages
need no communication; only metrics (and the batch std for ``scale_rewards: batch``) cross ranks.
The pieces live elsewhere: the math in :mod:`grpo.core`, log-probs and micro-batching in :mod:`grpo.policy`,
dynamic sampling in :mod:`grpo.dynamic_sampling`, metrics in :mod:`grpo.metrics`, the sinks in :mod:`grpo.logging`.

Notation: B prompts per process, G = num_generations, N = B x G sequences, P prompt tokens, T completion
tokens.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch import Tensor

from grpo import core, metrics, policy
from grpo.checkpoint import load_checkpoint, resolve_resume, restore_logs, save_checkpoint, write_errors
from grpo.config import GRPOConfig
from grpo.dynamic_sampling import advantages_over_ranks, collect
from grpo.evaluate import eval_options, evaluate
from grpo.logging import MetricsLogger, completion_records, tracker_names
from grpo.model import (
    build_optimizer,
    full_weights,
    load_policy,
    load_reference,
    load_tokenizer,
    make_accelerator,
    optimizer_step,
    reference_context,
    resolve_dtype,
    resolve_model_path,
    save_final,
)
from grpo.precision import decode_copy_dtype, plan_for_run
from grpo.rollout import backend_for_run
from grpo.run_record import last_logged_eval, logged_eval, logged_step_seconds
from grpo.sampling import sampling_correction_enabled, sampling_weights
from grpo.stop import StopRequest, count_bad_steps
from grpo.tasks import Task, get_task
from grpo.tasks.templates import reward_prompts
from grpo.types import StepBatch, UpdateStats
from rewards.calling import TrainerState
from rewards.combine import build_rewards, score


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
        self.sampling_correction = sampling_correction_enabled(cfg, decode_dtype is not None)
        self.backend = backend_for_run(cfg, self.tokenizer, resolve_model_path(cfg.model_name_or_path), decode_dtype)
        # Gradient checkpointing turns the KV cache off in training, which prompt sharing needs.
        self.share_prompts = cfg.share_prompt_forward and not cfg.gradient_checkpointing
        # ZeRO-3 / FSDP shard the lm_head weight: the fused head needs it whole, so it computes all logits there.
        self.sharded_weights = self.accelerator.distributed_type.name in ("DEEPSPEED", "FSDP")
        self.logger = MetricsLogger(cfg, acc)
        self.bad_steps = 0  # consecutive steps whose update was dropped as non-finite
        self.global_step = 0  # steps finished, for the rewards' trainer_state

    # --- one step ----------------------------------------------------------------------------------------

    def completion_logprobs(self, model: torch.nn.Module, batch: StepBatch, idx: Tensor,
                            with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """Log-probs (n, T') of the sampled tokens of rows ``idx`` (and entropy), see :func:`policy.completion_logprobs`."""
        r = batch.rollout
        G = self.cfg.num_generations
        share = self.share_prompts and policy.whole_groups(idx, G)
        return policy.completion_logprobs(
            model, r.prompt_ids[idx], r.prompt_mask[idx], r.completion_ids[idx], r.completion_mask[idx],
            temperature=self.cfg.temperature, group_size=G if share else None,
            inner=self.accelerator.unwrap_model(model), with_entropy=with_entropy, top_k=self.cfg.top_k,
            top_p=self.cfg.top_p, lm_head_chunk_size=0 if self.sharded_weights else self.cfg.lm_head_chunk_size)

    def sample_round(self) -> tuple[StepBatch, dict[str, float]]:
        """Sample B prompts, G completions each, and score them. -> batch of N with rewards, round metrics."""
        t0 = time.perf_counter()
        rows = self.stream.take(self.prompts_per_step)
        with full_weights(self.model, self.accelerator) as model:  # FSDP: gathered once, not per decoded token
            rollout = self.backend.generate(model, [r["prompt"] for r in rows], self.cfg.num_generations)
        rows = [r for r in rows for _ in range(self.cfg.num_generations)]
        t1 = time.perf_counter()
        notes: list[dict] = [{} for _ in rows]  # per-sample verdicts (accuracy's reasons) for completions.jsonl
        ids = [c[m.bool()].tolist() for c, m in zip(rollout.completion_ids, rollout.completion_mask)]  # TRL's form
        rewards, per_reward, reward_metrics = score(
            self.rewards, rollout.completions, rows, reward_prompts(self.task, rows, rollout.prompts),
            completion_lengths=rollout.lengths.tolist(), notes=notes, completion_ids=ids,
            trainer_state=self.reward_state())
        rows = [dict(row, verdicts=note) if note else row for row, note in zip(rows, notes)]
        timing = {"time/rollout_s": t1 - t0, "time/reward_s": time.perf_counter() - t1}
        return StepBatch(rollout, rows, rewards, per_reward), {**timing, **reward_metrics}

    def reward_state(self) -> TrainerState:
        """TRL's ``trainer_state`` for the rewards: steps finished, ``max_steps``, epochs of train rows so far."""
        rows = len(getattr(self.stream, "rows", None) or ()) or None
        epoch = getattr(self.stream, "epoch", 0) + getattr(self.stream, "pos", 0) / rows if rows else 0.0
        return TrainerState(global_step=self.global_step, max_steps=self.cfg.max_steps, epoch=float(epoch))

    def collect(self) -> tuple[StepBatch, dict[str, float]]:
        """This step's batch of N (rewards included), with DAPO dynamic sampling when configured (grpo.dynamic_sampling)."""
        cfg = self.cfg
        return collect(self.sample_round, B=self.prompts_per_step, G=cfg.num_generations, dynamic=cfg.dynamic_sampling,
                       max_rounds=cfg.max_sampling_rounds, pad_token_id=self.tokenizer.pad_token_id,
                       any_rank_needs_more=lambda need: metrics.any_rank(self.accelerator, need))

    def advantages(self, rewards: Tensor) -> Tensor:
        """Advantages (N,) for this rank's N rewards (``batch`` scaling: std over all ranks, grpo.dynamic_sampling)."""
        cfg = self.cfg
        return advantages_over_ranks(self.accelerator, rewards, cfg.num_generations, cfg.scale_rewards,
                                     cfg.advantage_estimator)

    def _fixed_logprobs(self, batch: StepBatch, micro: list[Tensor]) -> tuple[list | None, list | None]:
        """Old-policy (``num_iterations > 1``) and reference (``beta > 0``) log-probs per micro-batch, no grad."""
        cfg = self.cfg
        old = ref = None
        with torch.no_grad():
            if cfg.num_iterations > 1:  # with one update the sampling policy *is* the current one: ratio = 1
                old = [self.completion_logprobs(self.model, batch, idx)[0] for idx in micro]
            if cfg.beta > 0:
                if self.ref_model is not None:
                    ref = [self.completion_logprobs(self.ref_model, batch, idx)[0] for idx in micro]
                else:  # LoRA: the reference is the base model, i.e. the policy with its adapter off
                    with reference_context(self.model):
                        ref = [self.completion_logprobs(self.model, batch, idx)[0] for idx in micro]
        return old, ref

    def update(self, batch: StepBatch) -> UpdateStats:
        """``num_iterations`` optimizer steps over the batch, each accumulated over length-bucketed micro-batches."""
        cfg, acc = self.cfg, self.accelerator
        r = batch.rollout
        N = r.completion_ids.size(0)
        mask = r.completion_mask.float()
        if cfg.mask_truncated_completions:  # DAPO: a cut-off answer is not evidence about the policy's answers
            mask = mask * (~r.truncated).float().unsqueeze(1).to(mask.device)
        advantages = batch.advantages.to(acc.device)
        # dapo divides by the active tokens of the whole global batch; DDP then averages ranks.
        normalizer = acc.reduce(mask.sum().to(acc.device), reduction="sum").item() / acc.num_processes
        micro = policy.micro_batches(r.prompt_mask, r.completion_mask, cfg.num_generations, self.micro_steps)
        old, ref = self._fixed_logprobs(batch, micro)
        stats, loss_metrics, correction = UpdateStats(), {}, {}
        entropy_sum = entropy_tokens = 0.0
        self.model.train()
        for it in range(cfg.num_iterations):
            for j, idx in enumerate(micro):
                with acc.accumulate(self.model):
                    logprobs, entropy = self.completion_logprobs(self.model, batch, idx, with_entropy=(it == 0))
                    m = mask[idx][:, : logprobs.size(1)]
                    if entropy is not None:
                        entropy_sum += (entropy * m).sum().item()
                        entropy_tokens += m.sum().item()
                    old_j = logprobs.detach() if old is None else old[j]
                    weights = sampling_weights(cfg, r, idx, old_j, m, correction if it == 0 else None,
                                               self.micro_steps) if self.sampling_correction else None
                    loss, step_metrics = core.policy_loss(
                        logprobs, old_j, advantages[idx], m, sampling_weights=weights,
                        loss_type=cfg.loss_type, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                        max_completion_length=cfg.max_completion_length,
                        ref_logprobs=None if ref is None else ref[j], beta=cfg.beta,
                        importance_sampling_level=cfg.importance_sampling_level, normalizer=normalizer,
                        use_bias_correction_kl=cfg.use_bias_correction_kl)
                    # Per-sequence losses average over micro-batches; dapo's global normaliser already sums.
                    share = 1.0 if cfg.loss_type == "dapo" else idx.numel() / N
                    # accelerate divides by gradient_accumulation_steps in backward(); undo it, our share is exact.
                    acc.backward(loss * share * self.micro_steps)
                    if acc.sync_gradients:
                        norm, ok = self._optimizer_step()
                        stats.grad_norm += norm
                        stats.skipped_nonfinite += not ok
                stats.loss += loss.item() * share / cfg.num_iterations
                for k, v in step_metrics.items():  # clip ratios and kl: mean over micro-batches and iterations
                    loss_metrics[k] = loss_metrics.get(k, 0.0) + v / (len(micro) * cfg.num_iterations)
        stats.grad_norm /= cfg.num_iterations
        stats.entropy = entropy_sum / max(entropy_tokens, 1.0)
        stats.add_loss_metrics(loss_metrics)
        stats.sampling = correction
        self.backend.sync_weights(acc.unwrap_model(self.model))
        return stats

    def _optimizer_step(self) -> tuple[float, bool]:
        """Clip, then step unless the gradient is not finite (grpo.model.optimizer_step). -> (norm, stepped)."""
        return optimizer_step(self.accelerator, self.model, self.optimizer, self.scheduler, self.cfg.max_grad_norm)

    def step(self, step: int) -> dict[str, float]:
        """One GRPO step; returns this step's metrics (over all ranks)."""
        cfg, acc = self.cfg, self.accelerator
        self.global_step = step - 1  # as TRL's trainer_state while this step's batch is scored
        t0 = time.perf_counter()
        batch, collect_metrics = self.collect()
        t2 = time.perf_counter()
        batch.advantages = self.advantages(batch.rewards)
        if self.logger.should_log_completions(step):
            records = completion_records(step, batch, cfg.num_generations)
            self.logger.log_completions(metrics.gather_records(acc, records, self.prompts_per_step))
        # All advantages zero (every group agreed) and no KL: the gradient is exactly zero, but Adam's
        # momentum would still move the weights, which damages small models. Skip the update instead.
        any_signal = acc.reduce(batch.advantages.abs().sum().to(acc.device), reduction="sum").item() > 0
        stats = self.update(batch) if any_signal or cfg.beta > 0 else UpdateStats.skipped()
        t3 = time.perf_counter()
        r = batch.rollout
        m = metrics.rollout_metrics_over_ranks(acc, batch.rewards, r.lengths, r.truncated, batch.per_reward,
                                               r.completions, cfg.num_generations, cfg.reflection_words,
                                               count_tokens=self._count_tokens)
        m.update(metrics.reduce_over_ranks(acc, {**stats.as_metrics(), **collect_metrics}))
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
        start_step, first_eval, last_eval = 0, None, None
        if resume_from is not None:
            start_step, rank_state = load_checkpoint(acc, resume_from)
            self.backend.mark_stale()  # an engine with its own weights (vllm) must not sample the pre-resume ones
            self.stream.load_state_dict(rank_state["stream"])
            self.bad_steps = rank_state.get("bad_steps", 0)
            restore_logs(acc, resume_from, cfg.output_dir)
            first_eval = logged_eval(Path(cfg.output_dir) / "metrics.jsonl", 0)
            acc.print(f"resuming from {resume_from} at step {start_step} of {cfg.max_steps}")
        elif cfg.eval_steps:
            first_eval = self.evaluate()
            self.logger.log(0, first_eval)
        last_eval = first_eval
        stop = StopRequest()
        t_start = time.perf_counter()
        step = start_step
        with stop.installed():
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
        if start_step >= cfg.max_steps:
            acc.print(f"nothing to do: {cfg.output_dir} already finished step {start_step}; raise --max_steps to "
                      "continue or pass --overwrite_output_dir true to start again")
        wall = time.perf_counter() - t_start
        if start_step > 0:  # resumed (or already finished): the summary covers the whole run, from its logs
            metrics_path = Path(cfg.output_dir) / "metrics.jsonl"
            wall += logged_step_seconds(metrics_path, start_step)
            if last_eval is first_eval:  # no eval ran in this session
                last_eval = last_logged_eval(metrics_path) or last_eval
        finished = step >= cfg.max_steps and not stop.requested
        if cfg.save_final_model and finished and start_step < cfg.max_steps:
            with write_errors(f"{cfg.output_dir}/final", cfg.output_dir):  # LoRA: adapter or merged (grpo/model.py)
                save_final(self.model, self.tokenizer, f"{cfg.output_dir}/final", cfg.save_merged, acc)
        summary = {"first_eval": first_eval, "last_eval": last_eval, "wall_s": wall, "steps": step,
                   "resumed_from": str(resume_from) if resume_from else None, "interrupted": stop.requested}
        self.logger.finish(summary)
        return summary

    # --- checkpoints -------------------------------------------------------------------------------------

    def save_checkpoint(self, step: int) -> Path:
        """Atomic ``output_dir/checkpoint-<step>`` with everything exact resume needs (all ranks call this)."""
        state = {"stream": self.stream.state_dict(), "bad_steps": self.bad_steps}
        return save_checkpoint(self.accelerator, self.cfg.output_dir, step, state, self.cfg.save_total_limit, self.model)
