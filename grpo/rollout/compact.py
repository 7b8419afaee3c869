"""The ``compact`` backend: a decode loop over the model's own forward in which finished rows leave the batch."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from grpo.hf_compat import cache_kwarg
from grpo.rollout.base import Backend, register_backend, sample_next
from grpo.rollout.turns import ToolTurns


@register_backend("compact")
class CompactSampler(Backend):
    """Decode loop over the model's own forward with a KV cache that drops finished sequences.

    ``model.generate`` keeps computing every row until the longest one ends; here a row that emits EOS
    leaves the batch (and its KV cache rows are freed), so a step costs what the live rows need. Same
    distribution as ``generate`` with temperature / top-k / top-p sampling.

    With tools, a row whose text ends a call keeps its place in the batch: the call's output ids are fed to it
    over the next decode steps as forced tokens (:meth:`grpo.rollout.turns.ToolTurns.step`) while the other rows
    go on sampling.
    """

    def decode(self, model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, num_generations: int,
               greedy: bool, max_new: int, turns: ToolTurns | None = None) -> tuple[Tensor, Tensor]:
        """Prefill once per prompt, then decode only the live rows. (N, P) -> completion ids (N, max_new) and the
        sampler's log-probs of them (N, max_new) float32 (0 on tool-output tokens, which ``turns`` records)."""
        from transformers import DynamicCache

        device = prompt_ids.device
        N, G = prompt_ids.size(0), num_generations
        out = torch.full((N, max_new), self.tokenizer.pad_token_id, dtype=torch.long, device=device)
        out_logp = torch.zeros((N, max_new), dtype=torch.float32, device=device)
        eos = torch.tensor(self.eos_ids, device=device)
        suppress_ids = self.generation_kwargs.get("suppress_tokens") or []
        suppress = torch.tensor(suppress_ids, dtype=torch.long, device=device) if suppress_ids else None  # once
        min_new = int(self.generation_kwargs.get("min_new_tokens", 0))
        check_every = finished_check_interval(device)
        cache = DynamicCache()
        kw = cache_kwarg(model)
        mask = prompt_mask
        pos = (mask.cumsum(dim=1) - 1).clamp(min=0)
        # Prefill each prompt once, then copy its KV cache to its G samples (G x less prefill work).
        logits = model(input_ids=prompt_ids[::G], attention_mask=mask[::G], position_ids=pos[::G], **{kw: cache},
                       use_cache=True, logits_to_keep=1).logits[:, -1]  # (B, V)
        if G > 1:
            cache.batch_repeat_interleave(G)
            logits = logits.repeat_interleave(G, dim=0)  # (N, V)
        next_pos = pos[:, -1] + 1  # (n,)
        live = torch.arange(N, device=device)  # original row of each live sequence
        done = torch.zeros(N, dtype=torch.bool, device=device)  # (n,) emitted EOS; stays on the device
        for t in range(max_new):
            if suppress is not None:
                logits = logits.index_fill(-1, suppress, float("-inf"))
            if t < min_new:
                logits = logits.index_fill(-1, eos, float("-inf"))
            token, logp = sample_next(logits, self.temperature, self.top_k, self.top_p, greedy, with_logprobs=True)
            if turns is not None:
                token, logp, forced = turns.step(live, t, token, logp, out, done)
            out[live, t] = token  # a row past its EOS writes tokens that finish() masks out
            out_logp[live, t] = logp
            if t == max_new - 1:
                break
            ended = torch.isin(token, eos)
            done = done | (ended if turns is None else ended & ~forced)  # an EOS inside tool output ends nothing
            # Dropping finished rows needs their count on the host (a GPU sync): only every check_every steps.
            if (t + 1) % check_every == 0:
                n_done = int(done.sum())
                if n_done == done.numel():
                    break
                if n_done:
                    keep = (~done).nonzero().squeeze(1)
                    cache.batch_select_indices(keep)
                    live, token, mask, next_pos, done = live[keep], token[keep], mask[keep], next_pos[keep], done[keep]
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
            logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                           **{kw: cache}, use_cache=True).logits[:, -1]
            next_pos = next_pos + 1
        return out, out_logp


def finished_check_interval(device: torch.device) -> int:
    """Decode steps between checks for finished rows in :class:`CompactSampler`.

    On CPU a check is free and dropping rows at once saves work (and keeps the RNG stream, hence the default
    run's numbers, as they were). On a GPU each check is a device-to-host sync that stalls the launch queue;
    checking every 8 steps costs at most 7 extra steps of a finished row and lets the GPU run ahead.
    """
    return 1 if device.type == "cpu" else 8
