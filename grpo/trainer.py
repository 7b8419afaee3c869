"""The GRPO loop: rollout -> rewards -> advantages -> policy updates -> metrics -> eval.

Everything runs through ``accelerate`` so one code path serves CPU, one GPU, DDP, DeepSpeed and FSDP.
Each process samples its own prompts and keeps a prompt's G completions together, so group advantages
need no communication; only metrics (and the batch std for ``scale_rewards: batch``) cross ranks.

Notation: B prompts per process, G = num_generations, N = B x G sequences, P prompt tokens, T completion
tokens.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object, set_seed
from torch import Tensor
from transformers import get_scheduler

from grpo import core
from grpo.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, restore_logs, save_checkpoint
from grpo.config import GRPOConfig, resolve_model_path
from grpo.evaluate import eval_options, evaluate
from grpo.model import load_policy, load_reference, load_tokenizer, reference_context, save_final
from grpo.data import get_task
from grpo.logging import MetricsLogger, tracker_names
from grpo.rollout import RolloutBatch, _cache_kwarg, concat, make_backend, select
from rewards.combine import build_rewards, score


def _whole_groups(idx: Tensor, G: int) -> bool:
    """True when ``idx`` lists whole groups, each as G consecutive rows g*G .. g*G+G-1."""
    if idx.numel() % G:
        return False
    groups = idx.view(-1, G)
    return bool((groups[:, 0] % G == 0).all() and (groups - groups[:, :1] == torch.arange(G, device=idx.device)).all())


class TrainingError(RuntimeError):
    """The run cannot go on; the message is one line saying why and what to do."""


class _StopRequest:
    """SIGINT/SIGTERM: finish the current step, checkpoint, exit 0. A second signal exits at once."""

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
    def installed(self):
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

    def agreed(self, accelerator: Accelerator) -> bool:
        """True on every rank if any rank was signalled (so all ranks save and stop at the same step)."""
        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        return accelerator.reduce(flag, reduction="sum").item() > 0


class Trainer:
    """GRPO on a causal LM with rule rewards. Build with a validated :class:`GRPOConfig`, then ``train()``."""

    def __init__(self, cfg: GRPOConfig):
        self.cfg = cfg
        self.prompts_per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps // cfg.num_generations
        # Length buckets are extra accumulation micro-steps: one optimizer step still covers the whole batch.
        # A bucket holds whole groups, so there are at most as many micro-steps as prompts.
        self.micro_steps = min(cfg.gradient_accumulation_steps * cfg.update_buckets, self.prompts_per_step)
        # accelerate keeps its settings (mixed precision, accumulation) in a process-wide singleton; an earlier
        # Accelerator in this process (another trainer, a TRL run) must not leak e.g. bf16 autocast into ours.
        # The distributed process group (PartialState) is kept.
        AcceleratorState._reset_state()
        # accelerate wants mpirun for multi-process CPU unless told cpu=True; with cpu=True,
        # `accelerate launch --multi_gpu --num_processes 2` (or torchrun) runs 2 gloo ranks on a CPU machine.
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                                       gradient_accumulation_steps=self.micro_steps,
                                       log_with=tracker_names(cfg) or None, project_dir=cfg.output_dir)
        acc = self.accelerator
        if cfg.cpu_threads and acc.device.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        set_seed(cfg.seed, device_specific=True)  # each rank samples differently, reproducibly
        self.rewards = build_rewards(cfg.rewards)
        self.task = get_task(cfg.task, **cfg.task_kwargs)
        self.stream = self.task.train_stream(cfg.seed * 1000 + acc.process_index)

        self.tokenizer = load_tokenizer(cfg)
        self.task.bind_tokenizer(self.tokenizer)  # chat-template prompts are rendered with the model's tokenizer
        model = load_policy(cfg)
        self.ref_model = load_reference(cfg, acc.device)  # None with LoRA: reference_context(model) instead
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2))
        scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=cfg.warmup_steps,
                                  num_training_steps=cfg.max_steps * cfg.num_iterations)
        self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)
        self.backend = make_backend(
            cfg.rollout_backend, self.tokenizer, max_completion_length=cfg.max_completion_length,
            temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, generation_kwargs=cfg.generation_kwargs,
            prompt_bucket=cfg.prompt_bucket, compile_generation=cfg.compile_generation,
            model_name_or_path=resolve_model_path(cfg.model_name_or_path),
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, seed=cfg.seed)
        # Gradient checkpointing turns the KV cache off in training, which prompt sharing needs.
        self.share_prompts = cfg.share_prompt_forward and not cfg.gradient_checkpointing
        self.logger = MetricsLogger(cfg, acc, self.tokenizer)
        self.bad_steps = 0  # consecutive steps whose update was dropped as non-finite
        self._last_step_ok = True

    # --- log-probs ---------------------------------------------------------------------------------------

    def completion_logprobs(self, model: torch.nn.Module, batch: RolloutBatch, idx: Tensor,
                            with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """Log-probs of the sampled completion tokens for rows ``idx``. -> (n, T') and entropy (n, T') or None.

        The rows are trimmed to their own widths first (P' = longest real prompt, T' = longest completion
        among them), so a micro-batch of short sequences costs what short sequences need. When ``idx`` holds
        whole groups, each prompt runs once and its KV cache (with gradient) serves its G completions.
        Only the T' completion positions get logits, and log-softmax runs in chunks.
        """
        prompt_mask, completion_mask = batch.prompt_mask[idx], batch.completion_mask[idx]
        P = int(prompt_mask.sum(dim=1).max().item())
        T = max(int(completion_mask.sum(dim=1).max().item()), 1)
        prompt_ids, completion_ids = batch.prompt_ids[idx][:, -P:], batch.completion_ids[idx][:, :T]
        prompt_mask, completion_mask = prompt_mask[:, -P:], completion_mask[:, :T]
        G = self.cfg.num_generations
        if self.share_prompts and _whole_groups(idx, G):
            logits = self._shared_prefix_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, G)
        else:
            input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (n, P' + T')
            attention = torch.cat([prompt_mask, completion_mask], dim=1)
            position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)  # left padding must not shift positions
            logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                           logits_to_keep=T + 1).logits[:, :-1]  # (n, T', V): position t predicts token t
        logits = logits / self.cfg.temperature  # score under the distribution that sampled them
        logprobs = core.selective_log_softmax(logits, completion_ids)
        entropy = core.entropy_from_logits(logits.detach()) if with_entropy else None
        return logprobs, entropy

    def _shared_prefix_logits(self, model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor,
                              completion_ids: Tensor, completion_mask: Tensor, G: int) -> Tensor:
        """Logits at the completion positions, computing each prompt once for its G rows. -> (n, T', V).

        prompt_ids/mask (n, P'), completion_ids/mask (n, T'); rows come in whole groups of G identical
        prompts. The prompt pass builds a KV cache that keeps its autograd graph; repeated G times it feeds
        the completion pass, so the gradient through the prompt positions is the same as a full forward.
        """
        from transformers import DynamicCache

        T = completion_ids.size(1)
        cache = DynamicCache()
        kw = _cache_kwarg(model)
        pos = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
        # The wrapped model (DDP) is called once per micro-batch (below); the prompt pass uses the inner module,
        # whose parameters' gradient hooks still fire once per backward.
        inner = self.accelerator.unwrap_model(model)
        first = inner(input_ids=prompt_ids[::G], attention_mask=prompt_mask[::G], position_ids=pos[::G],
                      use_cache=True, logits_to_keep=1, **{kw: cache}).logits[:, -1:]  # (B', 1, V)
        first = first.repeat_interleave(G, dim=0)  # (n, 1, V): predicts completion token 0
        if T == 1:
            return first
        cache.batch_repeat_interleave(G)
        attention = torch.cat([prompt_mask, completion_mask[:, : T - 1]], dim=1)
        position_ids = pos[:, -1:] + 1 + torch.arange(T - 1, device=pos.device)[None, :]  # continue after the prompt
        rest = model(input_ids=completion_ids[:, : T - 1], attention_mask=attention, position_ids=position_ids,
                     use_cache=True, **{kw: cache}).logits  # (n, T' - 1, V): predicts tokens 1..T'-1
        return torch.cat([first, rest], dim=1)

    def micro_batches(self, batch: RolloutBatch) -> list[Tensor]:
        """Row indices of each micro-batch: whole groups sorted by their longest row, cut into
        ``gradient_accumulation_steps x update_buckets`` pieces, so each pads only to its own longest row
        and can share each prompt's forward among its G rows."""
        G = self.cfg.num_generations
        lengths = (batch.prompt_mask.sum(dim=1) + batch.completion_mask.sum(dim=1)).cpu()  # (N,)
        group_len = lengths.view(-1, G).max(dim=1).values  # (B,)
        order = torch.argsort(group_len, stable=True)
        rows = (order[:, None] * G + torch.arange(G)[None, :]).reshape(-1)  # groups stay contiguous
        return [r.to(batch.prompt_ids.device) for r in torch.tensor_split(rows, [k * G for k in self._group_splits()])]

    def _group_splits(self) -> list[int]:
        """Group boundaries of the ``micro_steps`` pieces (as even as whole groups allow)."""
        B, k = self.prompts_per_step, self.micro_steps
        return [(i * B) // k for i in range(1, k)]

    # --- one step ----------------------------------------------------------------------------------------

    def rollout(self) -> tuple[RolloutBatch, list[dict]]:
        """Sample B prompts and G completions each. -> batch of N and the N matching dataset rows."""
        rows = self.stream.take(self.prompts_per_step)
        model = self.accelerator.unwrap_model(self.model)
        batch = self.backend.generate(model, [r["prompt"] for r in rows], self.cfg.num_generations)
        return batch, [r for r in rows for _ in range(self.cfg.num_generations)]

    def score(self, batch: RolloutBatch, rows: list[dict]) -> tuple[Tensor, dict[str, Tensor], dict[str, float]]:
        """Rewards for a rollout batch. -> total (N,), per reward (N,) (NaN = None), reward metrics."""
        return score(self.rewards, batch.completions, rows, batch.prompts, completion_lengths=batch.lengths.tolist())

    def collect(self) -> tuple[RolloutBatch, list[dict], Tensor, dict[str, Tensor], dict[str, float]]:
        """Rollout and score B prompts; with ``dynamic_sampling``, keep only groups whose rewards differ.

        DAPO's dynamic sampling: a group whose G rewards all agree has zero advantage and teaches nothing, so
        it is dropped and more prompts are sampled until B groups with signal are found or
        ``max_sampling_rounds`` is reached; then the batch is topped up with dropped groups (zero advantage)
        so its shape stays fixed. Returns batch (N), rows (N), rewards (N,), per reward (N,), metrics.
        """
        cfg, G, B = self.cfg, self.cfg.num_generations, self.prompts_per_step
        timing = {"time/rollout_s": 0.0, "time/reward_s": 0.0}
        kept: list[tuple] = []
        spare: list[tuple] = []
        rounds = seen = 0
        reward_metrics: dict[str, float] = {}
        while True:
            t0 = time.perf_counter()
            batch, rows = self.rollout()
            t1 = time.perf_counter()
            rewards, per_reward, reward_metrics_round = self.score(batch, rows)
            timing["time/rollout_s"] += t1 - t0
            timing["time/reward_s"] += time.perf_counter() - t1
            for k, v in reward_metrics_round.items():
                reward_metrics[k] = reward_metrics.get(k, 0.0) + v
            rounds += 1
            if not cfg.dynamic_sampling:
                return batch, rows, rewards, per_reward, {**timing, **reward_metrics}
            has_signal = core.group_reward_std(rewards, G) > 0  # (B,)
            seen += B
            for g in range(B):
                (kept if has_signal[g] else spare).append((batch, rows, rewards, per_reward, g))
            # Every rank samples as many rounds as the neediest one: with sharded models (ZeRO-3, FSDP)
            # generation is collective, so ranks must run the same number of rollouts.
            need = torch.tensor([float(len(kept) < B and rounds < cfg.max_sampling_rounds)], device=self.accelerator.device)
            if self.accelerator.reduce(need, reduction="sum").item() == 0:
                break
        groups = (kept + spare)[:B]
        batch, rows, rewards, per_reward = self._gather_groups(groups)
        metrics = {**timing, **reward_metrics, "dynamic_sampling/rounds": float(rounds),
                   "dynamic_sampling/signal_groups_frac": len(kept) / seen,
                   "dynamic_sampling/filled_frac": min(len(kept), B) / B}
        return batch, rows, rewards, per_reward, metrics

    def _gather_groups(self, groups: list[tuple]) -> tuple[RolloutBatch, list[dict], Tensor, dict[str, Tensor]]:
        """Assemble chosen groups (batch, rows, rewards, per_reward, group index) into one batch of N."""
        G = self.cfg.num_generations
        parts, rows, rewards, per_reward = [], [], [], {}
        for batch, batch_rows, batch_rewards, batch_per_reward, g in groups:
            idx = list(range(g * G, (g + 1) * G))
            parts.append(select(batch, idx))
            rows += [batch_rows[i] for i in idx]
            rewards.append(batch_rewards[g * G : (g + 1) * G])
            for name, vec in batch_per_reward.items():
                per_reward.setdefault(name, []).append(vec[g * G : (g + 1) * G])
        merged = concat(parts, self.tokenizer.pad_token_id)
        return merged, rows, torch.cat(rewards), {k: torch.cat(v) for k, v in per_reward.items()}

    def advantages(self, rewards: Tensor) -> Tensor:
        """Advantages for this rank's N rewards. ``batch`` scaling uses the std over all ranks' rewards."""
        cfg, acc = self.cfg, self.accelerator
        if cfg.scale_rewards == "batch" and acc.num_processes > 1:
            all_rewards = acc.gather(rewards.to(acc.device)).cpu()
            adv = core.compute_advantages(all_rewards, cfg.num_generations, cfg.scale_rewards, cfg.advantage_estimator)
            n = rewards.numel()
            return adv[acc.process_index * n : (acc.process_index + 1) * n]
        return core.compute_advantages(rewards, cfg.num_generations, cfg.scale_rewards, cfg.advantage_estimator)

    def update(self, batch: RolloutBatch, advantages: Tensor) -> dict[str, float]:
        """``num_iterations`` optimizer steps over the rollout batch, each accumulated over micro-batches."""
        cfg, acc = self.cfg, self.accelerator
        N = batch.completion_ids.size(0)
        mask = batch.completion_mask.float()
        if cfg.mask_truncated_completions:  # DAPO: a cut-off answer is not evidence about the policy's answers
            mask = mask * (~batch.truncated).float().unsqueeze(1).to(mask.device)
        advantages = advantages.to(acc.device)
        # dapo divides by the active tokens of the whole global batch; DDP then averages ranks.
        global_tokens = acc.reduce(mask.sum().to(acc.device), reduction="sum").item()
        normalizer = global_tokens / acc.num_processes
        micro = self.micro_batches(batch)
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
        sums: dict[str, float] = {}
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
                    loss, metrics = core.policy_loss(
                        logprobs, logprobs.detach() if old is None else old[j], advantages[idx], m,
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
                        sums["grad_norm"] = sums.get("grad_norm", 0.0) + self._optimizer_step()
                        sums["skipped_nonfinite"] = sums.get("skipped_nonfinite", 0.0) + (not self._last_step_ok)
                sums["loss"] = sums.get("loss", 0.0) + loss.item() * share / cfg.num_iterations
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v / (len(micro) * cfg.num_iterations)
        sums["grad_norm"] = sums.get("grad_norm", 0.0) / cfg.num_iterations
        sums["entropy"] = entropy_sum / max(entropy_tokens, 1.0)
        self.backend.sync_weights(self.accelerator.unwrap_model(self.model))
        return sums

    def _optimizer_step(self) -> float:
        """Clip, then step, unless the gradient is not finite: then drop it (Adam state untouched). -> grad norm."""
        cfg = self.cfg
        # clip with an infinite bound still returns the norm, which is what the finiteness check needs.
        norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(),
                                                      cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf))
        # The norm is computed after DDP's all-reduce, so every rank takes the same branch.
        self._last_step_ok = math.isfinite(norm)
        if self._last_step_ok:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def step(self, step: int) -> dict[str, float]:
        """One GRPO step; returns this step's metrics (gathered over ranks)."""
        cfg, acc = self.cfg, self.accelerator
        t0 = time.perf_counter()
        batch, rows, rewards, per_reward, collect_metrics = self.collect()
        t2 = time.perf_counter()
        advantages = self.advantages(rewards)
        self.logger.log_completions(step, batch, rows, rewards, per_reward, advantages)
        # All advantages zero (every group agreed) and no KL: the gradient is exactly zero, but Adam's
        # momentum would still move the weights, which damages small models. Skip the update instead.
        any_signal = acc.reduce(advantages.abs().sum().to(acc.device), reduction="sum").item() > 0
        if any_signal or cfg.beta > 0:
            update_metrics = self.update(batch, advantages)
        else:
            update_metrics = {"loss": 0.0, "grad_norm": 0.0, "skipped_update": 1.0, "skipped_nonfinite": 0.0}
        t3 = time.perf_counter()
        m = self.logger.rollout_metrics(batch, rewards, per_reward, cfg.num_generations)
        m.update(update_metrics)
        m.setdefault("skipped_update", 0.0)
        m["learning_rate"] = self.scheduler.get_last_lr()[0]
        m.update(self._sum_over_ranks(collect_metrics))
        m["time/update_s"], m["time/step_s"] = t3 - t2, t3 - t0
        total_tokens = m["completions/mean_length"] * m["completions/count"]  # all ranks' tokens
        m["throughput/completion_tokens_per_s"] = total_tokens / max(m["time/rollout_s"], 1e-9)
        return m

    def _sum_over_ranks(self, metrics: dict[str, float]) -> dict[str, float]:
        """Counters summed over ranks (reward timeouts, errors...); times and rounds: the slowest rank.

        ``gather_object`` rather than ``reduce``: ranks may hold different keys (a counter only some hit).
        """
        acc = self.accelerator
        if acc.num_processes == 1:
            return metrics
        out: dict[str, float] = {}
        for rank_metrics in gather_object([metrics]):
            for k, v in rank_metrics.items():
                if k.startswith(("time/", "dynamic_sampling/rounds")):
                    out[k] = max(out.get(k, v), v)
                elif k.startswith("dynamic_sampling/"):  # fractions: mean over ranks
                    out[k] = out.get(k, 0.0) + v / acc.num_processes
                else:
                    out[k] = out.get(k, 0.0) + v
        return out

    # --- evaluation --------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Greedy pass@1 on the task's held-out rows (all ranks take part)."""
        cfg = self.cfg
        # The eval reward and format reward get the run's kwargs (boxed answers, prefilled <think>...).
        return evaluate(self.accelerator.unwrap_model(self.model), self.backend, self.task.eval_rows, self.accelerator,
                        cfg.eval_batch_size, cfg.eval_max_completion_length or cfg.max_completion_length,
                        **eval_options(cfg, self.task))

    # --- the loop ----------------------------------------------------------------------------------------

    def train(self) -> dict:
        """Run (or resume) up to ``max_steps`` steps with evals and checkpoints. Returns a summary dict.

        Raises:
            TrainingError: ``max_bad_steps`` steps in a row had a non-finite loss or gradient.
        """
        cfg, acc = self.cfg, self.accelerator
        resume_from = self._checkpoint_to_resume()
        self.logger.start()
        start_step, first_eval, last_eval = 0, None, None
        if resume_from is not None:
            start_step, rank_state = load_checkpoint(acc, resume_from)
            self.stream.load_state_dict(rank_state["stream"])
            self.bad_steps = rank_state.get("bad_steps", 0)
            restore_logs(acc, resume_from, cfg.output_dir)
            first_eval = self._logged_eval(0)
            acc.print(f"resuming from {resume_from} at step {start_step} of {cfg.max_steps}")
        elif cfg.eval_steps:
            first_eval = self.evaluate()
            self.logger.log(0, first_eval)
        last_eval = first_eval
        stop = _StopRequest()
        t_start = time.perf_counter()
        step = start_step
        with stop.installed():
            for step in range(start_step + 1, cfg.max_steps + 1):
                metrics = self.step(step)
                self.logger.log(step, metrics)
                self._check_bad_steps(step, metrics)
                if cfg.eval_steps and (step % cfg.eval_steps == 0 or step == cfg.max_steps):
                    last_eval = self.evaluate()
                    self.logger.log(step, last_eval)
                stopping = stop.agreed(acc)
                if (cfg.save_steps and step % cfg.save_steps == 0) or stopping or (cfg.save_steps and step == cfg.max_steps):
                    path = self.save_checkpoint(step)
                if stopping:
                    acc.print(f"stopped by signal after step {step}; checkpoint saved to {path}. "
                              "Rerun the same command to resume.")
                    break
        if start_step >= cfg.max_steps:
            acc.print(f"nothing to do: {cfg.output_dir} already finished step {start_step}; raise --max_steps to "
                      "continue or pass --overwrite_output_dir true to start again")
        wall = time.perf_counter() - t_start
        finished = step >= cfg.max_steps and not stop.requested
        if cfg.save_final_model and finished and start_step < cfg.max_steps:
            self.save_final()
        summary = {"first_eval": first_eval, "last_eval": last_eval, "wall_s": wall, "steps": step,
                   "resumed_from": str(resume_from) if resume_from else None, "interrupted": stop.requested}
        self.logger.finish(summary)
        return summary

    # --- checkpoints -------------------------------------------------------------------------------------

    def _checkpoint_to_resume(self) -> Path | None:
        """``resume_from_checkpoint`` if set; else the newest complete checkpoint unless ``overwrite_output_dir``."""
        cfg, acc = self.cfg, self.accelerator
        if cfg.resume_from_checkpoint:
            return Path(cfg.resume_from_checkpoint)
        if cfg.overwrite_output_dir:
            if acc.is_main_process:
                for old in list_checkpoints(cfg.output_dir):
                    shutil.rmtree(old, ignore_errors=True)
            acc.wait_for_everyone()
            return None
        return latest_checkpoint(cfg.output_dir)

    def save_checkpoint(self, step: int) -> Path:
        """Atomic ``output_dir/checkpoint-<step>`` with everything exact resume needs (all ranks call this)."""
        rank_state = {"stream": self.stream.state_dict(), "bad_steps": self.bad_steps}
        return save_checkpoint(self.accelerator, self.cfg.output_dir, step, rank_state, self.cfg.save_total_limit)

    def _logged_eval(self, step: int) -> dict | None:
        """The eval row for ``step`` from the (restored) metrics.jsonl, for the summary after a resume."""
        from grpo.plot import read_metrics  # matplotlib import: only on resume

        path = Path(self.cfg.output_dir) / "metrics.jsonl"
        if not path.is_file():
            return None
        for row in read_metrics(path):
            if row.get("step") == step and "eval/accuracy" in row:
                return {k: v for k, v in row.items() if k.startswith("eval/")}
        return None

    def _check_bad_steps(self, step: int, metrics: dict[str, float]) -> None:
        """Count steps in a row whose update was dropped as non-finite; stop after ``max_bad_steps``."""
        self.bad_steps = self.bad_steps + 1 if metrics.get("skipped_nonfinite", 0) > 0 else 0
        if self.cfg.max_bad_steps and self.bad_steps >= self.cfg.max_bad_steps:
            raise TrainingError(
                f"stopping at step {step}: {self.bad_steps} steps in a row had a non-finite loss or gradient and were "
                "skipped; lower learning_rate, check the rewards, or resume from the last checkpoint")

    def save_final(self) -> None:
        """``save_pretrained`` of the trained model and tokenizer to ``output_dir/final`` (main process)."""
        # A LoRA run saves its adapter, or with save_merged the base with the adapter merged in (grpo/model.py).
        save_final(self.model, self.tokenizer, f"{self.cfg.output_dir}/final", self.cfg.save_merged, self.accelerator)
