"""Rollout backends: the compact sampler matches generate, samples the right distribution, and frees rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.batch import RolloutBatch
from grpo.cli import load_config
from grpo.rollout import CompactSampler, HFGenerateBackend, make_backend, sample_next
from grpo.scoring import lm_head_bypassed
from grpo.trainer import Trainer

TINY = Path(__file__).resolve().parents[1] / "models" / "tiny-base"
PROMPTS = ["Q: 3+4=?\nA:", "Q: 9+8+7+6+5=?\nA:", "Q: 1+2+3=?\nA:"]


@pytest.fixture(scope="module")
def tiny():
    return AutoModelForCausalLM.from_pretrained(TINY).eval(), AutoTokenizer.from_pretrained(TINY)


def test_compact_greedy_equals_generate(tiny):
    model, tok = tiny
    ours = CompactSampler(tok, 64).generate(model, PROMPTS, 1, greedy=True)
    ref = HFGenerateBackend(tok, 64).generate(model, PROMPTS, 1, greedy=True)
    assert ours.completions == ref.completions
    assert torch.equal(ours.completion_ids, ref.completion_ids)
    assert torch.equal(ours.completion_mask, ref.completion_mask)
    assert torch.equal(ours.truncated, ref.truncated)


def test_compact_batch_layout_and_truncation(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    batch = CompactSampler(tok, 12).generate(model, PROMPTS, 4)
    N = 12
    assert batch.prompt_ids.shape[0] == N and len(batch.completions) == N
    assert batch.prompts == [p for p in PROMPTS for _ in range(4)]
    lengths = batch.lengths
    for i in range(N):
        n = int(lengths[i])
        ids = batch.completion_ids[i]
        assert (ids[n:] == tok.pad_token_id).all()  # nothing after EOS / the cap
        ended = ids[n - 1].item() == tok.eos_token_id
        assert ended != bool(batch.truncated[i])
    assert batch.truncated.any()  # 12 tokens cannot hold the 5-term chain
    assert batch.completion_ids.shape[1] == int(lengths.max())  # no all-padding columns


def test_min_new_tokens_suppresses_eos(tiny):
    model, tok = tiny
    batch = CompactSampler(tok, 20, generation_kwargs={"min_new_tokens": 20}).generate(model, PROMPTS, 2)
    assert (batch.lengths == 20).all() and batch.truncated.all()


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8)])
def test_sample_next_draws_the_target_distribution(temperature, top_k, top_p):
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -3.0])
    target = torch.softmax(logits / temperature, -1)
    if top_k:
        target[torch.argsort(target, descending=True)[top_k:]] = 0
    if top_p < 1:
        sorted_p, order = torch.sort(target, descending=True)
        keep = (sorted_p.cumsum(0) - sorted_p) <= top_p
        target[order[~keep]] = 0
    target = target / target.sum()
    n = 200_000
    draws = sample_next(logits.expand(n, -1).clone(), temperature, top_k, top_p)
    freq = torch.bincount(draws, minlength=6).float() / n
    assert torch.allclose(freq, target, atol=4e-3), (freq, target)


def test_select_and_concat_keep_rows_aligned(tiny):
    model, tok = tiny
    torch.manual_seed(1)
    a = CompactSampler(tok, 30).generate(model, PROMPTS[:2], 2)
    b = CompactSampler(tok, 30).generate(model, PROMPTS[1:], 2)
    both = RolloutBatch.concat([a.select([2, 3]), b.select([0, 1])], tok.pad_token_id)
    assert both.completions == a.completions[2:4] + b.completions[0:2]
    for i, src, j in [(0, a, 2), (3, b, 1)]:
        n = int(src.lengths[j])
        assert torch.equal(both.completion_ids[i, :n], src.completion_ids[j, :n])
        p = int(src.prompt_mask[j].sum())
        assert torch.equal(both.prompt_ids[i, -p:], src.prompt_ids[j, -p:])
        assert int(both.prompt_mask[i].sum()) == p


def test_vllm_missing_is_one_clear_error(tiny):
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"needs vLLM: pip install 'grpo-zero\[vllm\]'"):
            make_backend("vllm", tiny[1], max_completion_length=8, model_name_or_path=str(TINY))
    else:
        pytest.skip("vllm is installed here; the missing-package path cannot be exercised")


def test_unknown_backend_lists_known(tiny):
    with pytest.raises(ValueError, match="known: compact, hf, vllm"):
        make_backend("nope", tiny[1], max_completion_length=8)


@pytest.mark.parametrize("buckets, share, chunk", [("4", "false", "0"), ("1", "true", "0"), ("4", "true", "0"),
                                                   ("1", "false", "7"), ("4", "true", "512")])
def test_buckets_and_shared_prompts_give_the_same_update(tmp_path, buckets, share, chunk):
    """Length buckets (trimmed padding), one prompt pass per group and the lm_head fused with the log-softmax in
    token chunks (lm_head_chunk_size > 0) change the cost, not the gradient."""
    results = []
    # the plain update first (all logits at once), then the variant
    for n_buckets, shared, chunk_size in (("1", "false", "0"), (buckets, share, chunk)):
        torch.manual_seed(0)
        cfg = load_config(["--per_device_train_batch_size", "32", "--eval_steps", "0", "--task_kwargs",
                           "{num_eval: 8}", "--output_dir", str(tmp_path / f"{n_buckets}{shared}{chunk_size}"),
                           "--update_buckets", n_buckets, "--share_prompt_forward", shared, "--num_generations", "4",
                           "--save_final_model", "false", "--learning_rate", "1e-3",
                           "--lm_head_chunk_size", chunk_size])
        t = Trainer(cfg)
        with lm_head_bypassed(t.accelerator.unwrap_model(t.model)) as head_weight:
            assert head_weight is not None  # the fused path is really taken on this model
        grads = []
        real_step = t._optimizer_step

        def capture(grads=grads, t=t, real_step=real_step) -> tuple[float, bool]:
            grads.extend(p.grad.detach().clone() for p in t.model.parameters())
            return real_step()

        t._optimizer_step = capture
        torch.manual_seed(0)
        batch, _ = t.collect(1)
        batch.advantages = t.advantages(batch)
        m = t.update(batch)
        results.append((grads, m, batch.rollout.completions))
    (ga, ma, ca), (gb, mb, cb) = results
    assert ca == cb
    assert ma.grad_norm == pytest.approx(mb.grad_norm, rel=1e-5)
    assert ma.entropy == pytest.approx(mb.entropy, rel=1e-5)
    assert len(ga) == len(gb) > 0
    for a, b in zip(ga, gb):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def _reference_logprobs(model, batch, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Log-probs of the sampled tokens from one full forward, under the warped distribution. -> (N, T)."""
    from grpo.logprobs import warp_logits

    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    attention = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    pos = (attention.cumsum(1) - 1).clamp(min=0)
    T = batch.completion_ids.size(1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention, position_ids=pos).logits[:, -T - 1 : -1]  # (N, T, V)
    warped = warp_logits(logits.reshape(-1, logits.size(-1)), temperature, top_k, top_p).view_as(logits)
    return torch.log_softmax(warped, -1).gather(-1, batch.completion_ids[..., None]).squeeze(-1)


@pytest.mark.parametrize("backend", ["compact", "hf"])
@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 5, 0.9)])
def test_sampler_logprobs_are_the_sampling_distribution(tiny, backend, temperature, top_k, top_p):
    """rollout: sampler_logprobs (N, T) float32 = log-prob of each drawn token under the distribution it was drawn
    from (temperature, truncation), 0 on padding; greedy decoding reports 0 (a point mass)."""
    model, tok = tiny
    torch.manual_seed(0)
    sampler = make_backend(backend, tok, max_completion_length=24, temperature=temperature, top_k=top_k, top_p=top_p)
    batch = sampler.generate(model, PROMPTS, 4)
    logp = batch.sampler_logprobs
    assert logp is not None and logp.dtype == torch.float32 and logp.shape == batch.completion_ids.shape
    mask = batch.completion_mask.bool()
    want = _reference_logprobs(model, batch, temperature, top_k, top_p)
    assert torch.isfinite(logp[mask]).all() and (logp[mask] <= 0).all()
    assert torch.allclose(logp[mask], want[mask], atol=2e-4), (logp[mask] - want[mask]).abs().max()
    assert (logp[~mask] == 0).all()
    assert (logp[mask] < -1e-3).any()  # not all near-certain tokens: the check has teeth
    greedy = sampler.generate(model, PROMPTS, 1, greedy=True)
    assert (greedy.sampler_logprobs == 0).all()
    # select / concat carry them along with their rows
    both = RolloutBatch.concat([batch.select([1, 0]), greedy.select([2])], tok.pad_token_id)
    assert torch.equal(both.sampler_logprobs[0, : batch.completion_ids.size(1)], logp[1])
    assert (both.sampler_logprobs[2] == 0).all()


def test_compile_buckets_are_few_and_padding_rows_are_dropped():
    from grpo.rollout import batch_bucket, pad_rows

    assert [batch_bucket(n) for n in (1, 8, 9, 56, 128, 129)] == [8, 8, 16, 64, 128, 256]
    x = torch.tensor([[0, 1], [2, 3]])
    assert pad_rows(x, 4).tolist() == [[0, 1], [2, 3], [2, 3], [2, 3]] and pad_rows(x, 2) is x


def test_hf_static_cache_path_reuses_shapes_and_matches_compact(tiny, caplog):
    """compile_generation's fixed shapes (row buckets, one growing cache length), run without compilation on CPU:
    same greedy completions as compact, one shape for training- and eval-sized batches, sampler log-probs of the
    real rows only; a longer cache is reported as a new shape."""
    model, tok = tiny
    hf = HFGenerateBackend(tok, 24, compile_generation=True, prompt_bucket=16)
    compact = CompactSampler(tok, 24, prompt_bucket=16)
    assert hf.generate(model, PROMPTS, 1, greedy=True).completions == compact.generate(model, PROMPTS, 1,
                                                                                        greedy=True).completions
    torch.manual_seed(0)
    sampled = hf.generate(model, PROMPTS[:2], 3)  # 6 rows -> bucket 8, same cache length
    assert sampled.sampler_logprobs.shape == sampled.completion_ids.shape and len(sampled.completions) == 6
    assert hf.compiled_shapes == {(8, 256)} and hf.metrics() == {"compile/shapes": 1.0}
    with caplog.at_level("WARNING", logger="grpo.rollout"):
        hf.generate(model, PROMPTS, 1, greedy=True, max_new_tokens=300)  # needs a longer cache
    assert hf.compiled_shapes == {(8, 256), (8, 512)}
    assert "new decode shape (batch 8, cache 512)" in caplog.text




def test_draw_from_weights_never_draws_a_zero_weight():
    from grpo.rollout.base import draw_from_weights

    torch.manual_seed(0)
    weights = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0]]).repeat(2000, 1)
    token, total = draw_from_weights(weights)
    assert torch.equal(token, torch.tensor([1, 3, 0]).repeat(2000))
    assert torch.equal(total, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).repeat(2000))


def test_draw_from_weights_keeps_rare_tokens_rare_in_a_large_vocabulary():
    # 49,152 entries: one token at weight 1 and the rest at 1e-5 (0.33 of the mass in all); a float32 CDF
    # would blur the small weights, float64 keeps each interval exact.
    from grpo.rollout.base import draw_from_weights

    torch.manual_seed(0)
    V, n = 49_152, 4_000
    weights = torch.full((n, V), 1e-5)
    weights[:, 123] = 1.0
    token, _ = draw_from_weights(weights)
    expect = 1.0 / (1.0 + 1e-5 * (V - 1))
    share = (token == 123).float().mean().item()
    assert abs(share - expect) < 4 * (expect * (1 - expect) / n) ** 0.5, (share, expect)
    spread = torch.bincount(token[token != 123], minlength=V).float()
    assert spread[:V // 2].sum() / spread.sum() == pytest.approx(0.5, abs=0.05)  # no end of the CDF favoured


def test_sample_next_logprobs_are_those_of_the_warped_distribution():
    torch.manual_seed(0)
    logits = torch.randn(64, 50) * 3
    for t, k, p in [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.0, 0, 0.9)]:
        token, logp = sample_next(logits, t, k, p, with_logprobs=True)
        from grpo.logprobs import warp_logits

        expect = warp_logits(logits, t, k, p).log_softmax(-1).gather(-1, token[:, None]).squeeze(-1)
        assert torch.allclose(logp, expect, atol=1e-5)
        assert torch.isfinite(logp).all()
