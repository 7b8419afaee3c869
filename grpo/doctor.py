"""``python -m grpo.doctor --config X`` (or ``train.py --doctor``): will this run have a learning signal?

GRPO learns only from groups whose G rewards differ; a template the model does not follow, a verifier that cannot
read the model's answers, or a task far too hard or too easy gives every group the same reward and the run
learns nothing, however long it trains ("reward stuck at 0" is the most common complaint in open-r1's and TRL's
trackers). Before any training, the doctor samples the run's own model on a few training prompts with the run's
template and sampler (G completions each), scores them with the run's rewards, and prints:

- each reward's mean and share nonzero, and the share of groups whose G rewards all agree (no signal);
- format compliance: the share of completions in which the accuracy reward's ``answer_format`` finds an answer;
- what each gold answer scores when written as a completion in that format (a verifier or template that cannot
  give full credit at all shows here);
- mean and max completion length, the truncated share, and decode tokens/s;
- a one-line verdict with the likely fix.

Exit code 0 when the run has signal, 3 when it has none (2 for a bad config, as ``train.py``). It trains nothing;
it reuses preflight, the run's rollout backend and :func:`rewards.combine.score`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from grpo.config import GRPOConfig
from rewards.extract import find_answer
from rewards.last_number import LAST_NUMBER, find_last_number
from rewards.spec import reward_kwargs

NO_SIGNAL = 3  # the exit code of a run that would learn nothing
MIN_SIGNAL_SHARE = 0.1  # fewer groups with differing rewards than this: too few for the run to learn from
WHERE = {"r1": "an <answer> block", "boxed": "\\boxed{}", "auto": "an <answer> block or \\boxed{}",
         LAST_NUMBER: "a number"}


@dataclass(frozen=True)
class Findings:
    """What the doctor measured on B prompts x G completions (N = B x G).

    Attributes:
        n, groups: completions and prompts sampled.
        reward_mean, reward_nonzero: per reward name, its mean (``None`` values left out) and share nonzero.
        total_mean: mean weighted total reward.
        flat_groups: share of groups whose G total rewards all agree (no signal).
        answer_format: the accuracy reward's format (what "compliance" looks for).
        compliant: share of completions in which that format finds an answer.
        gold_scores: per reward name, its mean on the gold answers written as completions in that format.
        eval_reward: the reward that says right or wrong (``eval_reward``).
        last_number_acc: the eval reward's share right with ``answer_format: last_number`` on the same
            completions (``None`` when the run already uses it, or it does not apply).
        mean_length, max_length: completion lengths in tokens (EOS included).
        truncated: share of completions cut at ``max_completion_length``.
        tokens_per_s: completion tokens decoded per second of rollout.
    """

    n: int
    groups: int
    reward_mean: dict[str, float]
    reward_nonzero: dict[str, float]
    total_mean: float
    flat_groups: float
    answer_format: str
    compliant: float
    gold_scores: dict[str, float]
    eval_reward: str
    last_number_acc: float | None
    mean_length: float
    max_length: int
    truncated: float
    tokens_per_s: float


def finds_answer(completion: str, answer_format: str) -> bool:
    """Does ``answer_format`` find a final answer in ``completion``? (format compliance)"""
    found = find_last_number(completion) if answer_format == LAST_NUMBER else find_answer(completion, answer_format)
    return found.answer is not None


def gold_completion(gold: str, answer_format: str, prefilled_think: bool = False) -> str:
    """The gold answer written as a completion in the expected format.

    Example:
        >>> gold_completion("12", "boxed"), gold_completion("12", "r1")
        ('The answer is $\\\\boxed{12}$.', '<think>12</think><answer>12</answer>')
    """
    if answer_format == "boxed":
        return f"The answer is $\\boxed{{{gold}}}$."
    if answer_format == LAST_NUMBER:
        return f"The answer is {gold}."
    think = "" if prefilled_think else "<think>"
    return f"{think}{gold}</think><answer>{gold}</answer>"


def flat_share(totals: torch.Tensor, group_size: int) -> float:
    """Share of groups whose G = ``group_size`` rewards all agree. totals (B*G,) -> float."""
    groups = totals.view(-1, group_size)
    return (groups.max(dim=1).values - groups.min(dim=1).values <= 1e-6).float().mean().item()


def verdict(f: Findings, cfg: GRPOConfig) -> tuple[bool, str]:
    """(has signal, the one-line verdict with the likely fix)."""
    signal = 1.0 - f.flat_groups
    if f.gold_scores.get(f.eval_reward, 1.0) <= 0.0:
        return False, (f"no gold answer scores above 0 with reward '{f.eval_reward}' even written in its format "
                       f"({gold_completion('GOLD', f.answer_format)!r}): the verifier cannot give credit; check its "
                       "kwargs (answer_format) and the dataset's answer column")
    if signal >= MIN_SIGNAL_SHARE:
        return True, (f"signal: {round(signal * f.groups)} of {f.groups} groups have differing rewards "
                      f"(accuracy {f.reward_mean.get(f.eval_reward, float('nan')):.2f}, format compliance "
                      f"{f.compliant:.2f}); training can learn from them")
    where = WHERE.get(f.answer_format, "an answer")
    n_ok = round(f.compliant * f.n)
    cut = f"{f.truncated:.0%} of completions hit max_completion_length {cfg.max_completion_length}"
    if f.truncated > 0.5 and 0 < f.compliant < 0.5:  # the answer would have come later: cut off, not unable
        return False, f"{cut} before ending; only {n_ok} of {f.n} contain {where}: raise max_completion_length"
    if n_ok == 0:
        fix = "try answer_format: last_number"
        if cfg.task_kwargs.get("template") == "chat" and not cfg.task_kwargs.get("system_prompt"):
            fix = "try template: chat with system_prompt: qwen_math (boxed) or r1, or answer_format: last_number"
        elif f.answer_format != LAST_NUMBER and "template" not in cfg.task_kwargs:
            fix = f"try a template that asks for {where}, or answer_format: last_number"
        if f.last_number_acc is not None:
            fix += f" (it scores {f.last_number_acc:.2f} on these same completions)"
        if f.truncated > 0.5:  # both may hold: a model that rambles past the budget and never writes the format
            fix += f"; {cut}, so also try a larger max_completion_length"
        return False, f"{n_ok} of {f.n} completions contain {where}: the model does not follow this template; {fix}"
    acc = f.reward_mean.get(f.eval_reward, 0.0)
    if acc >= 1.0 - 1e-6:
        return False, f"all {f.n} completions are right: the task is too easy for this model; use harder problems"
    if acc <= 1e-6:
        return False, (f"{n_ok} of {f.n} completions contain {where} but none is right: the task is too hard for "
                       "this model; use easier problems or a stronger model")
    return False, (f"only {signal:.0%} of groups have differing rewards: raise temperature or num_generations, "
                   "or use problems nearer the model's level")


def report_lines(f: Findings) -> list[str]:
    """The printed report (without the verdict)."""
    lines = [(f"doctor: {f.groups} prompts x {f.n // max(f.groups, 1)} completions, the run's template, sampler "
              "and rewards")]
    for name in f.reward_mean:
        lines.append(f"  reward {name:<12} mean {f.reward_mean[name]:.3f}  nonzero {f.reward_nonzero[name]:.2f}  "
                     f"gold answer scores {f.gold_scores.get(name, float('nan')):.2f}")
    lines.append(f"  total reward mean {f.total_mean:.3f}; groups with no signal (all G rewards equal) "
                 f"{f.flat_groups:.2f}")
    also = "" if f.last_number_acc is None else f"; accuracy with answer_format last_number {f.last_number_acc:.2f}"
    where = WHERE.get(f.answer_format, "an answer")
    lines.append(f"  format compliance ({f.answer_format}: contains {where}) {f.compliant:.2f}{also}")
    lines.append(f"  length mean {f.mean_length:.1f} max {f.max_length} tokens; truncated {f.truncated:.2f}; "
                 f"{f.tokens_per_s:.0f} tokens/s")
    return lines


def _last_number_acc(cfg: GRPOConfig, fmt: str, completions: list[str], rows: list[dict]) -> float | None:
    """The eval reward's share right with ``answer_format: last_number`` (``None`` if it is not ``accuracy``)."""
    if fmt == LAST_NUMBER or cfg.eval_reward != "accuracy":
        return None
    from rewards.accuracy import judge

    verdicts = judge(completions, [str(r["answer"]) for r in rows], answer_format=LAST_NUMBER)
    return sum(v.score for v in verdicts) / max(len(verdicts), 1)


def examine(cfg: GRPOConfig, task: Any, prompts: int) -> Findings:
    """Sample ``prompts`` training prompts x G with the run's model and sampler and score them (no training)."""
    from accelerate.utils import set_seed

    from grpo.model import load_policy, load_tokenizer
    from grpo.paths import resolve_model_path
    from grpo.rollout import backend_for_run
    from rewards.combine import build_rewards, score

    if cfg.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(cfg.cpu_threads)
    set_seed(cfg.seed)
    G = cfg.num_generations
    tokenizer = load_tokenizer(cfg)
    rows = task.train_stream(cfg.seed * 1000, tokenizer).take(prompts)  # the first prompts rank 0 would train on
    model = load_policy(cfg).to("cuda" if torch.cuda.is_available() else "cpu").eval()
    backend = backend_for_run(cfg, tokenizer, resolve_model_path(cfg.model_name_or_path))
    t0 = time.perf_counter()
    with torch.no_grad():
        batch = backend.generate(model, [r["prompt"] for r in rows], G)
    seconds = time.perf_counter() - t0
    backend.close()
    rows = [r for r in rows for _ in range(G)]
    specs = build_rewards(cfg.rewards)
    lengths = batch.lengths.tolist()
    totals, per_reward, _ = score(specs, batch.completions, rows, batch.prompts, completion_lengths=lengths,
                                  tool_calls=batch.tool_records())
    acc_kwargs = reward_kwargs(cfg.rewards, "accuracy")
    fmt = acc_kwargs.get("answer_format", "r1")
    prefilled = bool(cfg.task_kwargs.get("prefill_think"))
    golds = [gold_completion(str(r["answer"]), fmt, prefilled) for r in rows[::G]]
    _, gold_per_reward, _ = score(specs, golds, rows[::G], batch.prompts[::G], completion_lengths=[8] * len(golds))
    if cfg.eval_reward not in gold_per_reward:  # an eval reward that is not trained on: score the golds with it too
        gold_per_reward.update(score(build_rewards({cfg.eval_reward: {"weight": 1.0, "kwargs": reward_kwargs(
            cfg.rewards, cfg.eval_reward)}}), golds, rows[::G], batch.prompts[::G])[1])
    def mean(v: torch.Tensor) -> float:  # None values (NaN) left out, as in training's rewards/<name>/mean
        return torch.nanmean(v).item() if (~torch.isnan(v)).any() else 0.0

    return Findings(
        n=len(rows), groups=len(rows) // G, reward_mean={k: mean(v) for k, v in per_reward.items()},
        reward_nonzero={k: (torch.nan_to_num(v) != 0).float().mean().item() for k, v in per_reward.items()},
        total_mean=totals.mean().item(), flat_groups=flat_share(totals, G), answer_format=fmt,
        compliant=sum(finds_answer(c, fmt) for c in batch.completions) / len(rows),
        gold_scores={k: mean(v) for k, v in gold_per_reward.items()}, eval_reward=cfg.eval_reward,
        last_number_acc=_last_number_acc(cfg, fmt, batch.completions, rows), mean_length=sum(lengths) / len(lengths),
        max_length=max(lengths), truncated=batch.truncated.float().mean().item(),
        tokens_per_s=sum(lengths) / max(seconds, 1e-9))


def split_prompts(argv: list[str], default: int = 8) -> tuple[int, list[str]]:
    """Take ``--prompts N`` (the doctor's own option) out of ``argv``. -> (N, the rest for ``load_config``)."""
    rest, n, it = [], default, iter(argv)
    for a in it:
        if a == "--prompts" or a.startswith("--prompts="):
            value = a.split("=", 1)[1] if "=" in a else next(it, "")
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"--prompts needs a whole number >= 1, got {value!r}")
            n = int(value)
        else:
            rest.append(a)
    return n, rest


def main(argv: list[str] | None = None) -> int:
    """``python -m grpo.doctor [--prompts N] --config X [--key value ...]``. Returns 0 (signal), 3 (none) or 2."""
    from grpo.cli import help_text, load_config
    from grpo.errors import ConfigError
    from grpo.preflight import preflight

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.split("\n\n")[0] + "\n\nusage: python -m grpo.doctor [--prompts N (8)] --config X [--key value "
              "...]\n\n" + help_text())
        return 0
    try:
        prompts, rest = split_prompts(argv)
        cfg, task = preflight(load_config(rest), resume=False)
        findings = examine(cfg, task, prompts)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    ok, line = verdict(findings, cfg)
    print("\n".join(report_lines(findings)))
    print(("verdict: " if ok else "verdict: NO SIGNAL: ") + line, flush=True)
    return 0 if ok else NO_SIGNAL


if __name__ == "__main__":
    sys.exit(main())
