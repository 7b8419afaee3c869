"""Train a base model with GRPO and rule rewards.

    accelerate launch train.py                                  # the embedded default: tiny model, CPU, minutes
    accelerate launch train.py --config configs/default.yaml --max_steps 50 --output_dir runs/x
    python train.py --help                                      # every config key

A bad config ends with one line on stderr naming the problem (exit code 2), before any model loads.
"""

from __future__ import annotations

import sys

from grpo.config import ConfigError, help_text, load_config


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    # --smoke is a switch: bare `--smoke` means `--smoke true`.
    argv = ["--smoke=true" if a == "--smoke" and (i + 1 == len(argv) or argv[i + 1].startswith("--")) else a
            for i, a in enumerate(argv)]
    try:
        cfg = load_config(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from grpo.trainer import Trainer, TrainingError  # heavy imports only after the config is known to be good
    from rewards.combine import RewardError

    try:
        Trainer(cfg).train()
    except (TrainingError, RewardError) as e:  # a stuck run or a raising verifier: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:  # found while loading: a model or dataset that cannot be reached, a bad row
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
