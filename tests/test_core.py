"""grpo/core.py: hand-computed values, loop-vs-vectorised equivalence, and TRL 1.16's own code on the same inputs.

Expected numbers are written out in closed form here (never produced by the code under test); the TRL
cross-checks call ``GRPOTrainer._compute_loss`` / ``_generate_and_score_completions`` and
``RLOOTrainer._generate_and_score_completions`` on a real trainer whose model forward and generation are
replaced by our tensors.
"""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path

import pytest
import torch

from grpo import core
from grpo.core import LossOptions, compute_advantages, group_reward_std, k3_kl
from grpo.logprobs import entropy_from_logits, fused_linear_logprobs, selective_log_softmax

torch.set_num_threads(1)
TINY = Path(__file__).resolve().parents[1] / "models" / "tiny-base"
EPS = 1e-4  # TRL's std epsilon, restated here so the expected values do not import it
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
F64 = torch.float64


def policy_loss(logprobs, old_logprobs, advantages, mask, *, ref_logprobs=None, normalizer=None,
                sampling_weights=None, **options):
    """``core.policy_loss`` with its ``LossOptions`` built from keywords, so each case reads as one line."""
    return core.policy_loss(logprobs, old_logprobs, advantages, mask, LossOptions(**options),
                            ref_logprobs=ref_logprobs, normalizer=normalizer, sampling_weights=sampling_weights)


def correction_weights(old, sampler, mask, mode, clip_max=3.0, clip_min=None):
    """``sampling_correction_weights`` with its ``CorrectionOptions`` built from the arguments."""
    from grpo.correction import CorrectionOptions, sampling_correction_weights

    return sampling_correction_weights(old, sampler, mask, CorrectionOptions(mode, clip_max, clip_min))


def close(actual: torch.Tensor | float, expected: list[float] | float, tol: float = 1e-9) -> None:
    """Assert a tensor (or float) equals expected numbers within ``tol``."""
    a = torch.as_tensor(actual, dtype=F64).detach()
    e = torch.as_tensor(expected, dtype=F64)
    assert a.shape == e.shape, (a.shape, e.shape)
    assert torch.allclose(a, e, atol=tol, rtol=0), f"\n got {a.tolist()}\nwant {e.tolist()}"


# --- advantages: hand-computed -------------------------------------------------------------------------

# Two groups of G = 4: means 0.5 and 2; unbiased stds sqrt(1/3) and sqrt(2/3).
REWARDS = [1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 2.0]
CENTRED = [0.5, -0.5, -0.5, 0.5, 1.0, -1.0, 0.0, 0.0]


def test_grpo_group_scale_divides_by_each_groups_unbiased_std() -> None:
    s1, s2 = math.sqrt(1 / 3), math.sqrt(2 / 3)
    expected = [c / (s1 + EPS) for c in CENTRED[:4]] + [c / (s2 + EPS) for c in CENTRED[4:]]
    close(compute_advantages(torch.tensor(REWARDS, dtype=F64), 4, "group"), expected)


def test_grpo_batch_scale_divides_by_the_batch_std() -> None:
    # batch mean 1.25; squared deviations sum to 7.5, so the unbiased variance is 7.5 / 7
    std = math.sqrt(7.5 / 7)
    close(compute_advantages(torch.tensor(REWARDS, dtype=F64), 4, "batch"), [c / (std + EPS) for c in CENTRED])


def test_grpo_no_scale_is_dr_grpo_mean_centring_only() -> None:
    close(compute_advantages(torch.tensor(REWARDS, dtype=F64), 4, "none"), CENTRED)


RLOO = [2 / 3, -2 / 3, -2 / 3, 2 / 3, 4 / 3, -4 / 3, 0.0, 0.0]  # r_i - mean of the other three


def test_rloo_leave_one_out_baseline() -> None:
    close(compute_advantages(torch.tensor(REWARDS, dtype=F64), 4, "none", estimator="rloo"), RLOO)


def test_rloo_batch_standardises_the_advantages() -> None:
    # mean 0; squares sum to 16/3, unbiased variance 16/21
    std = 4 / math.sqrt(21)
    close(compute_advantages(torch.tensor(REWARDS, dtype=F64), 4, "batch", estimator="rloo"),
          [a / (std + EPS) for a in RLOO])


def test_rloo_group_standardises_within_each_group() -> None:
    s1, s2 = (2 / 3) * math.sqrt(4 / 3), math.sqrt(32 / 27)
    close(compute_advantages(torch.tensor(REWARDS, dtype=F64), 4, "group", estimator="rloo"),
          [a / (s1 + EPS) for a in RLOO[:4]] + [a / (s2 + EPS) for a in RLOO[4:]])


def test_nan_reward_is_left_out_of_the_group_and_gets_zero_advantage() -> None:
    r = torch.tensor([1.0, float("nan"), 0.0, 1.0], dtype=F64)  # mean of the scored three: 2/3, std sqrt(1/3)
    s = math.sqrt(1 / 3)
    close(compute_advantages(r, 4, "group"), [(1 / 3) / (s + EPS), 0.0, (-2 / 3) / (s + EPS), (1 / 3) / (s + EPS)])
    close(compute_advantages(r, 4, "none", estimator="rloo"), [1 - 0.5, 0.0, 0 - 1.0, 1 - 0.5])


def test_constant_group_and_single_generation_give_zero_advantages() -> None:
    close(compute_advantages(torch.full((4,), 0.7, dtype=F64), 4, "group"), [0.0] * 4)
    close(compute_advantages(torch.tensor([0.3, 0.9], dtype=F64), 1, "group"), [0.0, 0.0])
    close(group_reward_std(torch.tensor(REWARDS, dtype=F64), 4), [math.sqrt(1 / 3), math.sqrt(2 / 3)])
    close(group_reward_std(torch.tensor([0.3, 0.9], dtype=F64), 1), [0.0, 0.0])


# --- policy loss: hand-computed ------------------------------------------------------------------------
# Two sequences, T = 3. Ratios chosen exactly; the second sequence's last token is padding.
RATIOS = [[1.5, 0.5, 1.1], [0.7, 1.3, 2.0]]
ADV = [1.0, -1.0]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]


def _hand_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -0.9]], dtype=F64)
    logp = (old + torch.tensor(RATIOS, dtype=F64).log()).requires_grad_()
    return logp, old, torch.tensor(ADV, dtype=F64), torch.tensor(MASK, dtype=F64)


# eps 0.2 / eps_high 0.28: seq 0 (A = +1) clips 1.5 -> 1.28; min keeps 0.5 and 1.1: loss -[1.28, 0.5, 1.1].
# seq 1 (A = -1): -min(-r, -clip(r)) = max(r, clip(r)): 0.7 -> 0.8, 1.3 stays: loss [0.8, 1.3, (masked)].
SEQ0, SEQ1 = -(1.28 + 0.5 + 1.1), 0.8 + 1.3


@pytest.mark.parametrize(
    ("loss_type", "kwargs", "expected"),
    [
        ("grpo", {}, (SEQ0 / 3 + SEQ1 / 2) / 2),
        ("bnpo", {}, (SEQ0 + SEQ1) / 5),
        ("dr_grpo", {"max_completion_length": 4}, (SEQ0 + SEQ1) / (2 * 4)),
        ("dapo", {}, (SEQ0 + SEQ1) / 5),
        ("dapo", {"normalizer": 10.0}, (SEQ0 + SEQ1) / 10),
        ("dapo", {"normalizer": 0.5}, (SEQ0 + SEQ1) / 0.5),  # 1 token over 2 ranks: not clamped to 1
    ],
)
def test_clipped_loss_hand_values(loss_type: str, kwargs: dict, expected: float) -> None:
    logp, old, adv, mask = _hand_inputs()
    loss, m = policy_loss(logp, old, adv, mask, loss_type=loss_type, epsilon=0.2, epsilon_high=0.28, **kwargs)
    close(loss, expected)
    # low: 0.7 < 0.8 with A < 0; high: 1.5 > 1.28 with A > 0; the masked 2.0 does not count
    assert m["clip_ratio/low"] == pytest.approx(1 / 5)
    assert m["clip_ratio/high"] == pytest.approx(1 / 5)
    assert m["clip_ratio"] == pytest.approx(2 / 5)
    assert "kl" not in m


def test_symmetric_epsilon_default_and_clip_higher_differ() -> None:
    logp, old, adv, mask = _hand_inputs()
    loss, m = policy_loss(logp, old, adv, mask, loss_type="bnpo", epsilon=0.2)  # epsilon_high = 0.2: 1.5 -> 1.2
    close(loss, (-(1.2 + 0.5 + 1.1) + SEQ1) / 5)
    assert m["clip_ratio/high"] == pytest.approx(1 / 5)


def test_k3_kl_term_hand_values() -> None:
    logp, old, adv, mask = _hand_inputs()
    ref = logp.detach().clone()
    ref[0, 0] += math.log(2.0)  # k3 = e^d - d - 1 = 2 - ln 2 - 1
    ref[1, 2] += 5.0  # padding: must not count
    kl0 = 1 - math.log(2.0)
    close(k3_kl(logp, ref)[0], [kl0, 0.0, 0.0])
    loss, m = policy_loss(logp, old, adv, mask, loss_type="grpo", epsilon=0.2, epsilon_high=0.28,
                          ref_logprobs=ref, beta=0.1, use_bias_correction_kl=False)
    close(loss, ((SEQ0 + 0.1 * kl0) / 3 + SEQ1 / 2) / 2)
    assert m["kl"] == pytest.approx(kl0 / 5)
    # TRL 1.16's default weights the KL term by the ratio (1.5 at that token): E_old[ratio * k3] = E_current[k3]
    loss, m = policy_loss(logp, old, adv, mask, loss_type="grpo", epsilon=0.2, epsilon_high=0.28,
                          ref_logprobs=ref, beta=0.1)
    close(loss, ((SEQ0 + 0.1 * 1.5 * kl0) / 3 + SEQ1 / 2) / 2)
    assert m["kl"] == pytest.approx(1.5 * kl0 / 5)


def test_sequence_level_ratio_is_gspo_geometric_mean() -> None:
    logp, old, adv, mask = _hand_inputs()
    r0, r1 = (1.5 * 0.5 * 1.1) ** (1 / 3), (0.7 * 1.3) ** (1 / 2)  # 0.938 and 0.954
    loss, m = policy_loss(logp, old, adv, mask, loss_type="bnpo", epsilon=0.2, importance_sampling_level="sequence")
    close(loss, (3 * -r0 + 2 * r1) / 5)
    assert m["clip_ratio"] == 0.0
    # eps = 0.03: seq 1 (A < 0) has ratio 0.954 < 0.97 and is clipped to 0.97; seq 0 (A > 0) keeps 0.938
    loss, m = policy_loss(logp, old, adv, mask, loss_type="bnpo", epsilon=0.03, importance_sampling_level="sequence")
    close(loss, (3 * -r0 + 2 * 0.97) / 5)
    assert m["clip_ratio/low"] == pytest.approx(1 / 2)  # one ratio per sequence: a share of sequences


def test_on_policy_loss_value_is_minus_mean_advantage_yet_gradient_is_not_zero() -> None:
    # TRL #2703: with mu = 1 the ratio is 1, the "loss" is just -mean(A) (0 for centred A), the gradient is not.
    logp = torch.randn(4, 5, dtype=F64, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=F64)
    loss, _ = policy_loss(logp, None, adv, torch.ones(4, 5, dtype=F64), loss_type="bnpo")
    close(loss, 0.0)
    loss.backward()
    close(logp.grad, (-adv[:, None] / 20).expand(4, 5))


# --- mu = 1: the clipped objective's gradient is the plain policy gradient ------------------------------


@pytest.mark.parametrize(("loss_type", "level"), list(itertools.product(LOSS_TYPES, ["token", "sequence"])))
def test_on_policy_gradient_equals_policy_gradient(loss_type: str, level: str) -> None:
    g = torch.Generator().manual_seed(7)
    logp = (-torch.rand(6, 5, generator=g, dtype=F64) * 3).requires_grad_()
    mask = (torch.rand(6, 5, generator=g) > 0.3).to(F64)
    adv = torch.randn(6, generator=g, dtype=F64)
    loss, m = policy_loss(logp, logp.detach(), adv, mask, loss_type=loss_type, epsilon=0.2, epsilon_high=0.28,
                          max_completion_length=5, importance_sampling_level=level)
    (grad,) = torch.autograd.grad(loss, logp)
    assert m["clip_ratio"] == 0.0
    # plain REINFORCE surrogate -A * logp, aggregated the same way (sequence level: the mean log-prob of the sequence)
    if level == "token":
        pg = -adv[:, None] * logp
    else:
        pg = (-adv * (logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)).unsqueeze(1).expand_as(logp)
    denom = {"grpo": None, "bnpo": mask.sum(), "dr_grpo": 6 * 5, "dapo": mask.sum()}[loss_type]
    ref = ((pg * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean() if denom is None else (pg * mask).sum() / denom
    (ref_grad,) = torch.autograd.grad(ref, logp)
    assert grad.abs().sum() > 0
    close(grad, ref_grad.tolist(), tol=1e-12)


# --- loop reference vs vectorised ------------------------------------------------------------------------


def loop_advantages(rewards: list[float], g: int, scale: str, estimator: str) -> list[float]:
    """Plain-python reference (statistics.stdev is the unbiased std); no NaNs."""
    groups = [rewards[i : i + g] for i in range(0, len(rewards), g)]
    if estimator == "grpo":
        raw = [r - statistics.fmean(grp) for grp in groups for r in grp]
        if scale == "group":
            return [(r - statistics.fmean(grp)) / (statistics.stdev(grp) + EPS) for grp in groups for r in grp]
        if scale == "batch":
            return [a / (statistics.stdev(rewards) + EPS) for a in raw]
        return raw
    raw = [r - (sum(grp) - r) / (g - 1) for grp in groups for r in grp]
    if scale == "batch":
        mu, sd = statistics.fmean(raw), statistics.stdev(raw)
        return [(a - mu) / (sd + EPS) for a in raw]
    if scale == "group":
        out = []
        for k in range(len(groups)):
            part = raw[k * g : (k + 1) * g]
            out += [(a - statistics.fmean(part)) / (statistics.stdev(part) + EPS) for a in part]
        return out
    return raw


@pytest.mark.parametrize("seed", range(5))
def test_advantages_match_loop_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    G = [2, 3, 4, 8, 5][seed]
    rewards = torch.randint(0, 3, (G * 4,), generator=g).to(F64) + torch.rand(G * 4, generator=g, dtype=F64)
    for scale, est in itertools.product(["group", "batch", "none"], ["grpo", "rloo"]):
        expected = loop_advantages(rewards.tolist(), G, scale, est)
        close(compute_advantages(rewards, G, scale, estimator=est), expected, tol=1e-9)


def loop_loss(lp: list, old: list, adv: list, mask: list, ref: list | None, *, loss_type: str, eps: float,
              eps_high: float, beta: float, level: str, max_len: int, kl_corr: bool) -> float:
    """Plain-python PPO-clip + k3 loss, one token at a time."""
    n, t = len(lp), len(lp[0])
    rows = []  # per sequence: list of (loss, counted)
    for i in range(n):
        active = sum(mask[i])
        seq_lr = sum((lp[i][j] - old[i][j]) * mask[i][j] for j in range(t)) / max(active, 1)
        row = []
        for j in range(t):
            ratio = math.exp(seq_lr if level == "sequence" else lp[i][j] - old[i][j])
            clipped = min(max(ratio, 1 - eps), 1 + eps_high)
            val = -min(ratio * adv[i], clipped * adv[i])
            if beta:
                d = ref[i][j] - lp[i][j]
                val += beta * (math.exp(d) - d - 1) * (ratio if kl_corr else 1.0)
            row.append(val * mask[i][j])
        rows.append((sum(row), active))
    total, tokens = sum(s for s, _ in rows), sum(c for _, c in rows)
    if loss_type == "grpo":
        return sum(s / max(c, 1) for s, c in rows) / n
    if loss_type == "dr_grpo":
        return total / (n * max_len)
    return total / max(tokens, 1)  # bnpo and dapo (one process, no accumulation)


@pytest.mark.parametrize("seed", range(4))
def test_policy_loss_matches_loop_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    n, t = 5, 7
    lp = -torch.rand(n, t, generator=g, dtype=F64) * 3
    old = lp + 0.3 * torch.randn(n, t, generator=g, dtype=F64)  # ratios far enough from 1 to clip
    ref = lp + 0.2 * torch.randn(n, t, generator=g, dtype=F64)
    adv = torch.randn(n, generator=g, dtype=F64)
    mask = (torch.rand(n, t, generator=g) > 0.25).to(F64)
    mask[seed % n] = 0.0  # a fully masked row must not break any aggregation
    cases = itertools.product(LOSS_TYPES, ["token", "sequence"], [0.0, 0.04], [False, True])
    for loss_type, level, beta, corr in cases:
        got, _ = policy_loss(lp, old, adv, mask, loss_type=loss_type, epsilon=0.2, epsilon_high=0.28,
                             max_completion_length=t + 1, ref_logprobs=ref, beta=beta, importance_sampling_level=level,
                             use_bias_correction_kl=corr)
        want = loop_loss(lp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), ref.tolist(), loss_type=loss_type,
                         eps=0.2, eps_high=0.28, beta=beta, level=level, max_len=t + 1, kl_corr=corr)
        assert got.item() == pytest.approx(want, abs=1e-12), (loss_type, level, beta, corr)


# --- chunked log-softmax and entropy -----------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_chunked_selective_log_softmax_and_entropy_equal_naive(chunk_size: int) -> None:
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(3, 5, 11, generator=g, dtype=F64) * 4).requires_grad_()
    index = torch.randint(0, 11, (3, 5), generator=g)
    naive_lp = torch.log_softmax(logits, -1).gather(-1, index[..., None]).squeeze(-1)
    p = torch.softmax(logits, -1)
    naive_ent = -(p * torch.log_softmax(logits, -1)).sum(-1)
    lp = selective_log_softmax(logits, index, chunk_size=chunk_size)
    ent = entropy_from_logits(logits, chunk_size=chunk_size)
    assert lp.dtype == F64 and ent.dtype == F64  # float64 is not silently downcast
    close(lp, naive_lp.tolist(), tol=1e-12)
    close(ent, naive_ent.tolist(), tol=1e-12)
    w1, w2 = torch.randn(3, 5, generator=g, dtype=F64), torch.randn(3, 5, generator=g, dtype=F64)
    got = torch.autograd.grad((lp * w1).sum() + (ent * w2).sum(), logits)[0]
    want = torch.autograd.grad((naive_lp * w1).sum() + (naive_ent * w2).sum(), logits)[0]
    close(got, want.tolist(), tol=1e-12)


def test_chunked_functions_pass_gradcheck_and_upcast_bfloat16() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 6, generator=g, dtype=F64, requires_grad=True)
    idx = torch.randint(0, 6, (2, 3), generator=g)
    assert torch.autograd.gradcheck(lambda z: selective_log_softmax(z, idx, chunk_size=2), (x,))
    assert torch.autograd.gradcheck(lambda z: entropy_from_logits(z, chunk_size=4), (x,))
    xb = x.detach().to(torch.bfloat16)
    lp = selective_log_softmax(xb, idx)
    assert lp.dtype == torch.float32  # computed from the bf16 values in float32
    close(lp, torch.log_softmax(xb.float(), -1).gather(-1, idx[..., None]).squeeze(-1).tolist(), tol=1e-6)


# --- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: compute_advantages(torch.zeros(4), 4, "grp"), "known: batch, group, none"),
        (lambda: compute_advantages(torch.zeros(4), 4, estimator="ppo"), "known: grpo, rloo"),
        (lambda: compute_advantages(torch.zeros(6), 4), "divisible by group_size=4"),
        (lambda: compute_advantages(torch.zeros(4), 1, estimator="rloo"), "needs num_generations >= 2"),
        (lambda: policy_loss(torch.zeros(2, 3), None, torch.zeros(2), torch.ones(2, 3), loss_type="sum"),
         "known: bnpo, dapo, dr_grpo, grpo"),
        (lambda: policy_loss(torch.zeros(2, 3), None, torch.zeros(2), torch.ones(2, 3), importance_sampling_level="x"),
         "known: sequence, token"),
        (lambda: policy_loss(torch.zeros(2, 3), None, torch.zeros(2), torch.ones(2, 3), loss_type="dr_grpo"),
         "needs max_completion_length"),
        (lambda: policy_loss(torch.zeros(2, 3), None, torch.zeros(2), torch.ones(2, 3), beta=0.1),
         "needs ref_logprobs"),
        (lambda: policy_loss(torch.zeros(2, 3), None, torch.zeros(3), torch.ones(2, 3)), "advantages must be (N,)"),
        (lambda: policy_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3)),
         "old_logprobs must have the shape"),
        (lambda: selective_log_softmax(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long)), "index shape"),
    ],
)
def test_bad_input_raises_one_clear_line(call, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        call()
    assert "\n" not in str(err.value)


# --- cross-check against TRL 1.16's own code ------------------------------------------------------------


@pytest.fixture(scope="module")
def trl_trainers(tmp_path_factory: pytest.TempPathFactory):
    """A real GRPOTrainer and RLOOTrainer on the bundled tiny model (built in ~0.2 s each, offline)."""
    import trl  # a test dependency: its absence must fail, not skip
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert trl.__version__.startswith("1.16"), f"cross-check written against trl 1.16, found {trl.__version__}"
    tok = AutoTokenizer.from_pretrained(TINY)
    ds = Dataset.from_dict({"prompt": ["Q: 1+2=?\nA:"] * 8})

    def zero_reward(completions: list, **kw) -> list[float]:
        return [0.0] * len(completions)

    common = {"per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 8, "report_to": [],
              "use_cpu": True, "bf16": False, "save_strategy": "no", "logging_strategy": "no"}
    grpo_args = trl.GRPOConfig(output_dir=str(tmp_path_factory.mktemp("grpo")), **common)
    rloo_args = trl.RLOOConfig(output_dir=str(tmp_path_factory.mktemp("rloo")), **common)
    grpo = trl.GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(TINY), reward_funcs=zero_reward,
                           args=grpo_args, train_dataset=ds, processing_class=tok)
    rloo = trl.RLOOTrainer(model=AutoModelForCausalLM.from_pretrained(TINY), reward_funcs=zero_reward,
                           args=rloo_args, train_dataset=ds, processing_class=tok)
    return grpo, rloo


def trl_loss(tr, logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
             ref: torch.Tensor | None, num_items: float) -> tuple[torch.Tensor, dict[str, float]]:
    """TRL's ``_compute_loss`` with its model forward replaced by ``logp``; one process, no accumulation."""
    n, t = logp.shape
    tr._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
    tr.current_gradient_accumulation_steps = 1
    tr.args.steps_per_generation = 1
    tr.model.train()
    tr._metrics["train"].clear()
    inputs = {
        "prompt_ids": torch.ones(n, 2, dtype=torch.long), "prompt_mask": torch.ones(n, 2, dtype=torch.long),
        "completion_ids": torch.ones(n, t, dtype=torch.long), "completion_mask": mask.long(),
        "advantages": adv, "old_per_token_logps": old, "num_items_in_batch": torch.tensor(num_items, dtype=F64),
    }
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    loss = tr._compute_loss(tr.model, inputs)
    m = {k: v[-1] for k, v in tr._metrics["train"].items()}
    return loss, m


@pytest.mark.parametrize(
    ("loss_type", "level", "beta", "kl_corr", "eps_high"),
    [
        (lt, lv, beta, corr, eh)
        for lt, lv, eh in itertools.product(LOSS_TYPES, ["token", "sequence"], [None, 0.28])
        for beta, corr in [(0.0, True), (0.04, True), (0.04, False)]
    ],
)
def test_policy_loss_matches_trl_compute_loss(trl_trainers, loss_type: str, level: str, beta: float, kl_corr: bool,
                                              eps_high: float | None) -> None:
    tr = trl_trainers[0]
    g = torch.Generator().manual_seed(11)
    n, t = 8, 6
    base = -torch.rand(n, t, generator=g, dtype=F64) * 3
    old = base + 0.25 * torch.randn(n, t, generator=g, dtype=F64)
    ref = base + 0.2 * torch.randn(n, t, generator=g, dtype=F64)
    adv = torch.randn(n, generator=g, dtype=F64)
    mask = (torch.rand(n, t, generator=g) > 0.3).to(F64)
    mask[:, 0] = 1.0
    tr.loss_type, tr.importance_sampling_level, tr.beta = loss_type, level, beta
    tr.epsilon_low, tr.epsilon_high = 0.2, 0.2 if eps_high is None else eps_high
    tr.max_completion_length = t + 2
    tr.args.use_bias_correction_kl = kl_corr
    # dapo: TRL divides by num_items_in_batch (active tokens of the generation batch); try a larger global count too
    for num_items, normalizer in [(mask.sum().item(), None), (3 * mask.sum().item(), 3 * mask.sum().item())]:
        lp_trl, lp_ours = base.clone().requires_grad_(), base.clone().requires_grad_()
        want, trl_m = trl_loss(tr, lp_trl, old, adv, mask, ref if beta else None, num_items)
        got, m = policy_loss(lp_ours, old, adv, mask, loss_type=loss_type, epsilon=0.2, epsilon_high=eps_high,
                             max_completion_length=t + 2, ref_logprobs=ref if beta else None, beta=beta,
                             importance_sampling_level=level, normalizer=normalizer, use_bias_correction_kl=kl_corr)
        assert abs(got.item() - want.item()) < 1e-10, (got.item(), want.item())  # the bar is 1e-6
        want.backward()
        got.backward()
        assert torch.allclose(lp_ours.grad, lp_trl.grad, atol=1e-10), "gradients differ from TRL's"
        # TRL reduces the clip flags in float32
        assert m["clip_ratio/low"] == pytest.approx(trl_m["clip_ratio/low_mean"], abs=1e-6)
        assert m["clip_ratio/high"] == pytest.approx(trl_m["clip_ratio/high_mean"], abs=1e-6)
        assert m["clip_ratio"] == pytest.approx(trl_m["clip_ratio/region_mean"], abs=1e-6)
        if beta:
            assert m["kl"] == pytest.approx(trl_m["kl"], abs=1e-9)
    assert trl_m["clip_ratio/region_mean"] > 0 or level == "sequence"  # the inputs do exercise clipping


def _trl_advantages(tr, rewards: torch.Tensor, rloo: bool) -> torch.Tensor:
    """TRL's ``_generate_and_score_completions`` with generation and reward scoring replaced by fixed values."""
    n = rewards.numel()
    prompt_ids, completion_ids, texts = [[5, 6, 7]] * n, [[8, 9]] * n, ["ab"] * n
    if rloo:  # RLOOTrainer._generate returns (prompt ids, completion ids, texts)
        tr._generate = lambda prompts: (prompt_ids, completion_ids, texts)
    else:  # GRPOTrainer._generate: ids, ids, tool mask, texts, sampling logps, extra fields, images, tool images
        tr._generate = lambda prompts: (prompt_ids, completion_ids, None, texts, None, {}, None, None)
    tr._calculate_rewards = lambda *a: rewards.unsqueeze(1).clone()
    tr.beta = 0.0  # the loss tests share this trainer; beta > 0 would ask for a reference model here
    tr.model.train()
    return tr._generate_and_score_completions([{"prompt": "Q: 1+2=?\nA:"}] * n)["advantages"]


@pytest.mark.parametrize("seed", range(3))
def test_advantages_match_trl(trl_trainers, seed: int) -> None:
    grpo, rloo = trl_trainers
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (8,), generator=g).to(F64) * torch.rand(8, generator=g, dtype=F64)
    rewards[4:8] = 1.0  # one constant group
    if seed == 2:
        rewards[1] = float("nan")  # an unscored completion
    # 1e-6, not 1e-12: TRL's nanstd computes the Bessel factor count / (count - 1) in float32
    for scale in ["group", "batch", "none"]:
        grpo.scale_rewards = scale
        close(compute_advantages(rewards, 4, scale), _trl_advantages(grpo, rewards, rloo=False).tolist(), tol=1e-6)
    for scale, normalize in [("none", False), ("batch", True)]:
        rloo.normalize_advantages = normalize
        close(compute_advantages(rewards, 4, scale, estimator="rloo"),
              _trl_advantages(rloo, rewards, rloo=True).tolist(), tol=1e-6)


# --- sampler/trainer mismatch correction (TRL's vllm_importance_sampling_*) ---------------------------------


def _trl_sampling_ratio(tr, old: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, mode: str,
                        clip_max: float | None, clip_min: float | None) -> tuple[torch.Tensor, dict[str, float]]:
    """TRL's ``_generate_and_score_completions`` with vLLM on, its generation returning ``sampler`` as vLLM's
    log-probs and its old-policy forward returning ``old``. -> (importance_sampling_ratio, TRL's sampling metrics)."""
    n, t = old.shape
    lengths = mask.sum(-1).long().tolist()
    completion_ids = [[8] * k for k in lengths]  # TRL rebuilds the mask from the lengths
    sampler_lists = [sampler[i, :k].tolist() for i, k in enumerate(lengths)]
    tr._generate = lambda prompts: ([[5, 6, 7]] * n, completion_ids, None, ["ab"] * n, sampler_lists, {}, None, None)
    tr._calculate_rewards = lambda *a: torch.zeros(n, 1, dtype=F64)
    tr._get_per_token_logps_and_entropies = lambda *a, **k: (old[:, : max(lengths)], None, None)
    tr.use_vllm, tr.vllm_importance_sampling_correction, tr.beta = True, True, 0.0
    tr.vllm_importance_sampling_mode = mode
    tr.vllm_importance_sampling_clip_max, tr.vllm_importance_sampling_clip_min = clip_max, clip_min
    tr.model.train()
    tr._metrics["train"].clear()
    try:
        out = tr._generate_and_score_completions([{"prompt": "Q: 1+2=?\nA:"}] * n)
    finally:
        tr.use_vllm = False
    metrics = {k: v[-1] for k, v in tr._metrics["train"].items() if k.startswith("sampling/")}
    return out["importance_sampling_ratio"], metrics


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
@pytest.mark.parametrize("clip_min, clip_max", [(None, 3.0), (0.5, 1.5), (0.8, None)])
def test_sampling_correction_matches_trl(trl_trainers, mode: str, clip_min: float | None, clip_max: float | None):
    """Our weights and metrics equal TRL 1.16's own computation on the same inputs, every mode and bound."""
    from grpo.correction import sampling_correction_metrics

    if mode.endswith("truncate") and clip_max is None and clip_min is None:
        pytest.skip("TRL's config rejects a truncate mode without bounds (so do we)")
    tr = trl_trainers[0]
    g = torch.Generator().manual_seed(3)
    n, t = 8, 6
    lengths = torch.tensor([6, 3, 5, 1, 6, 4, 2, 6])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(F64)
    old = -torch.rand(n, t, generator=g, dtype=F64) * 3
    # sequences 0-3 close to the trainer, 4-7 far (token ratios beyond [0.5, 1.5] and sequence ratios beyond 3)
    noise = torch.cat([0.05 * torch.randn(4, t, generator=g, dtype=F64), 0.9 * torch.randn(4, t, generator=g, dtype=F64)])
    noise[5] = 0.5  # the sampler likes sequence 5 more: token ratios 0.61, sequence ratio 0.14 (below the lower bounds)
    sampler = (old + noise) * mask
    want, trl_m = _trl_sampling_ratio(tr, old, sampler, mask, mode, clip_max, clip_min)
    got = correction_weights(old, sampler, mask, mode, clip_max=clip_max, clip_min=clip_min)
    assert got.shape == want.shape == ((n, 1) if mode.startswith("sequence") else (n, t))
    assert torch.allclose(got, want.to(got.dtype), atol=1e-6, rtol=1e-6), (got, want)
    ours_m = sampling_correction_metrics(old, sampler, mask, got)
    for k, v in trl_m.items():
        assert ours_m[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert set(trl_m) == set(ours_m)
    # the inputs exercise the bounds: something is clipped or masked in every case
    raw = correction_weights(old, sampler, mask, "token_truncate" if mode.startswith("token") else
                                      "sequence_truncate", clip_max=1e9)
    assert not torch.allclose(got, raw)


@pytest.mark.parametrize("mode", ["token_mask", "sequence_truncate"])
def test_corrected_loss_matches_trl_compute_loss(trl_trainers, mode: str) -> None:
    """The reweighted loss and its gradient equal TRL's ``_compute_loss`` given the same importance ratio."""

    tr = trl_trainers[0]
    g = torch.Generator().manual_seed(5)
    n, t = 8, 6
    base = -torch.rand(n, t, generator=g, dtype=F64) * 3
    sampler = base + 0.4 * torch.randn(n, t, generator=g, dtype=F64)
    adv = torch.randn(n, generator=g, dtype=F64)
    mask = torch.ones(n, t, dtype=F64)
    mask[2, 4:] = 0
    weights = correction_weights(base, sampler, mask, mode, clip_max=2.0, clip_min=0.5)
    tr.loss_type, tr.importance_sampling_level, tr.beta = "dapo", "token", 0.0
    tr.epsilon_low, tr.epsilon_high = 0.2, 0.28
    tr.use_vllm, tr.vllm_importance_sampling_correction = True, True
    try:
        lp_trl, lp_ours = base.clone().requires_grad_(), base.clone().requires_grad_()
        tr._get_per_token_logps_and_entropies = lambda *a, **k: (lp_trl, torch.zeros_like(lp_trl), None)
        tr.current_gradient_accumulation_steps = 1
        tr.model.train()
        inputs = {"prompt_ids": torch.ones(n, 2, dtype=torch.long), "prompt_mask": torch.ones(n, 2, dtype=torch.long),
                  "completion_ids": torch.ones(n, t, dtype=torch.long), "completion_mask": mask.long(),
                  "advantages": adv, "old_per_token_logps": base, "importance_sampling_ratio": weights,
                  "num_items_in_batch": torch.tensor(mask.sum().item(), dtype=F64)}
        want = tr._compute_loss(tr.model, inputs)
    finally:
        tr.use_vllm = False
    got, _ = policy_loss(lp_ours, base, adv, mask, loss_type="dapo", epsilon=0.2, epsilon_high=0.28,
                         sampling_weights=weights)
    assert abs(got.item() - want.item()) < 1e-10
    want.backward()
    got.backward()
    assert torch.allclose(lp_ours.grad, lp_trl.grad, atol=1e-10)
    unweighted, _ = policy_loss(base, base, adv, mask, loss_type="dapo", epsilon=0.2, epsilon_high=0.28)
    assert abs(unweighted.item() - got.item()) > 1e-3  # the weights matter on these inputs


def test_sampling_correction_hand_values() -> None:

    old = torch.log(torch.tensor([[0.5, 0.2, 0.9]], dtype=F64))
    sampler = torch.log(torch.tensor([[0.25, 0.4, 0.9]], dtype=F64))
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    close(correction_weights(old, sampler, mask, "token_truncate", clip_max=1.5)[0], [1.5, 0.5, 1.0])
    close(correction_weights(old, sampler, mask, "token_mask", clip_max=1.5)[0], [0.0, 0.5, 1.0])
    close(correction_weights(old, sampler, mask, "sequence_mask", clip_max=3.0)[0], [1.0])  # 2 * 0.5
    close(correction_weights(old, sampler, mask, "sequence_mask", clip_max=0.9)[0], [0.0])
    nan = torch.tensor([[float("nan"), float("nan"), 0.0]], dtype=F64)  # a sampler that could not score: ratio 1
    close(correction_weights(old, nan, mask, "token_truncate", clip_max=3.0)[0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="known: sequence_mask, sequence_truncate, token_mask, token_truncate"):
        correction_weights(old, sampler, mask, "token")


@pytest.mark.parametrize("chunk_size", [1, 5, 512])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_linear_logprobs_matches_full_logits(chunk_size, temperature):
    """lm_head fused into the chunked log-softmax: same log-probs, entropy and gradients (hidden and weight) as
    the full (n, T, V) logits path, float64 so the comparison is tight."""
    torch.manual_seed(0)
    n, T, H, V = 3, 7, 16, 50
    hidden = torch.randn(n, T, H, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, dtype=torch.float64, requires_grad=True)
    target = torch.randint(V, (n, T))
    upstream = torch.randn(n, T, dtype=torch.float64)  # a non-uniform upstream gradient, like a real loss

    logp_full = torch.log_softmax(hidden @ weight.T / temperature, dim=-1)  # (n, T, V)
    want = logp_full.gather(-1, target[..., None]).squeeze(-1)
    want_entropy = -(logp_full.exp() * logp_full).sum(-1)
    want_gh, want_gw = torch.autograd.grad((want * upstream).sum(), (hidden, weight))

    got, entropy = fused_linear_logprobs(hidden, weight, target, temperature, chunk_size, with_entropy=True)
    got_gh, got_gw = torch.autograd.grad((got * upstream).sum(), (hidden, weight))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy, want_entropy, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_gh, want_gh, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_gw, want_gw, rtol=0, atol=1e-12)
    assert not entropy.requires_grad


def test_fused_linear_logprobs_frozen_weight_and_bad_shapes():
    """A frozen lm_head (LoRA) gets no gradient and the hidden states still do; shapes are checked."""
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    weight = torch.randn(9, 4)
    target = torch.randint(9, (2, 3))
    logp, entropy = fused_linear_logprobs(hidden, weight, target, chunk_size=2)
    assert entropy is None
    logp.sum().backward()
    want = torch.autograd.grad(torch.log_softmax(hidden @ weight.T, -1).gather(-1, target[..., None]).sum(), hidden)[0]
    torch.testing.assert_close(hidden.grad, want)
    with pytest.raises(ValueError, match="must be"):
        fused_linear_logprobs(hidden, weight, target[:, :2])


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batches_weighted_by_their_declared_share_give_the_batch_loss(loss_type: str) -> None:
    """The update loop weighs each micro-batch's loss by ``Aggregation.micro_share`` and passes the global token
    count only to aggregations that declare ``global_tokens``: the sum is the whole batch's loss."""
    torch.manual_seed(0)
    per_token, mask = torch.randn(6, 5, dtype=F64), (torch.rand(6, 5) > 0.3).to(F64)
    agg = core.get_loss_aggregation(loss_type)
    normalizer = mask.sum().item() if agg.global_tokens else None
    whole = agg(per_token, mask, 5, normalizer)
    parts = [torch.tensor([0, 1]), torch.tensor([2, 3, 4]), torch.tensor([5])]
    summed = sum(agg(per_token[i], mask[i], 5, normalizer) * agg.micro_share(i.numel(), 6) for i in parts)
    close(summed, whole.item())
    assert agg.global_tokens == (loss_type == "dapo")


def test_a_registered_aggregation_declares_its_normaliser() -> None:
    @core.register_loss_aggregation("test_sum_over_global_tokens", global_tokens=True)
    def summed(per_token, mask, max_completion_length, normalizer):
        return (per_token * mask).sum() / normalizer

    try:
        agg = core.get_loss_aggregation("test_sum_over_global_tokens")
        assert agg.global_tokens and agg.micro_share(2, 8) == 1.0 and agg.fn is summed
        loss, _ = core.policy_loss(torch.zeros(2, 3), None, torch.ones(2), torch.ones(2, 3),
                                   LossOptions(loss_type="test_sum_over_global_tokens"), normalizer=12.0)
        close(loss, -6 / 12)  # on-policy: per-token loss -A = -1 on 6 tokens, over the given normaliser
    finally:
        core.LOSS_AGGREGATIONS.pop("test_sum_over_global_tokens")
    with pytest.raises(ValueError, match="clip ranges must be >= 0"):
        LossOptions(epsilon_high=-0.1)
