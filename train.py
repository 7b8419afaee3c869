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
    try:
        cfg = load_config(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from grpo.trainer import Trainer  # heavy imports only after the config is known to be good

    Trainer(cfg).train()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
