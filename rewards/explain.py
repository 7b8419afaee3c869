"""``python -m rewards.explain``: why did a completion score what it did under the ``accuracy`` reward?

    python -m rewards.explain --gold 12 --completion '<think>w</think><answer>12</answer> \\boxed{13}'
    python -m rewards.explain --file runs/x/completions.jsonl --step 10 --limit 5
    python -m rewards.explain --file completions.jsonl --reason multiple_answers   # only those verdicts

Each verdict prints its score, reason code (``hedged``, ``partial_parse``, ``retracted``, ... as in
``rewards.accuracy.Reason``), extracted answer, the path that decided it (``extract``, ``guard``,
``exact``, ``cas``, ``cache``) and the time it took; ``--answer_format`` and ``--after_answer`` are the
reward's kwargs, as in the config. Completions from a file are judged again with the current code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rewards.accuracy import ACCURACY_FORMATS, AFTER_ANSWER, Reason, Verdict, judge


def _short(text: str, n: int = 160) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[: n - 3] + "..."


def format_verdict(v: Verdict, gold: str, completion: str) -> str:
    """Three lines: the verdict, the gold and the (shortened) completion.

    Example:
        >>> from rewards.accuracy import Reason
        >>> print(format_verdict(Verdict(1.0, Reason.RIGHT, "8", "exact", 0.0001), "8", "<answer>8</answer>"))
        score 1.0  reason right  answer '8'  path exact  0.10 ms
          gold        '8'
          completion  '<answer>8</answer>'
    """
    return (f"score {v.score:.1f}  reason {v.reason.value}  answer {v.answer!r}  path {v.path}  "
            f"{v.seconds * 1000:.2f} ms\n  gold        {gold!r}\n  completion  {_short(completion)!r}")


def _records(path: Path, step: int | None, limit: int | None) -> list[tuple[str, str, str]]:
    """(gold, completion, label) from a completions.jsonl, filtered by step, at most ``limit``."""
    out = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a running job
            if step is not None and rec.get("step") != step:
                continue
            if "answer" not in rec or "completion" not in rec:
                raise ValueError(f"{path}: line {line_no} has no 'answer' and 'completion' (is it a completions.jsonl "
                                 "from a task with gold answers?)")
            out.append((str(rec["answer"]), rec["completion"], f"step {rec.get('step')} group {rec.get('group')}"))
    return out[:limit] if limit else out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rewards.explain", description=__doc__.splitlines()[0])
    ap.add_argument("--gold", help="the gold answer (with --completion)")
    ap.add_argument("--completion", help="one completion text (with --gold)")
    ap.add_argument("--file", help="a run's completions.jsonl")
    ap.add_argument("--step", type=int, help="with --file: only this step")
    ap.add_argument("--limit", type=int, help="with --file: at most this many completions")
    ap.add_argument("--reason", choices=[r.value for r in Reason], help="only print verdicts with this reason")
    ap.add_argument("--answer_format", default="r1", choices=ACCURACY_FORMATS)
    ap.add_argument("--after_answer", default="strict", choices=AFTER_ANSWER)
    return ap


def main(argv: list[str] | None = None) -> int:
    """The command. Returns the exit code: 0, or 2 for bad arguments or an unreadable file (one line)."""
    args = _parser().parse_args(argv)
    try:
        if args.file:
            if args.gold is not None or args.completion is not None:
                raise ValueError("give either --file or --gold with --completion, not both")
            path = Path(args.file)
            if not path.is_file():
                raise ValueError(f"--file {path}: no such file; give a run's completions.jsonl")
            items = _records(path, args.step, args.limit)
        elif args.gold is not None and args.completion is not None:
            items = [(args.gold, args.completion, "")]
        else:
            raise ValueError("give --gold G --completion TEXT, or --file completions.jsonl")
    except ValueError as e:
        print(f"rewards.explain: {e}", file=sys.stderr)
        return 2
    verdicts = judge([c for _, c, _ in items], [g for g, _, _ in items], answer_format=args.answer_format,
                     after_answer=args.after_answer)
    counts: dict[str, int] = {}
    for (gold, completion, label), v in zip(items, verdicts):
        counts[v.reason.value] = counts.get(v.reason.value, 0) + 1
        if args.reason and v.reason.value != args.reason:
            continue
        print((f"[{label}] " if label else "") + format_verdict(v, gold, completion))
    if args.reason and args.reason not in counts:  # say so, rather than print nothing but the counts
        where = f" at step {args.step}" if args.step is not None else ""
        print(f"no completion{where} has reason {args.reason}")
    if len(items) > 1:
        print(f"{len(items)} completions: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda x: -x[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
