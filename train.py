"""Train a base model with GRPO and rule rewards.

    accelerate launch train.py                                  # the embedded default: tiny model, CPU, minutes
    accelerate launch train.py --config configs/default.yaml --max_steps 50 --output_dir runs/x
    python train.py --help                                      # every config key
    python train.py --doctor --config X                         # will this run have signal? (grpo/doctor.py)

The flow reads top to bottom: ``load_config`` (parse and check values, no side effects) -> ``preflight``
(output folder, checkpoint to resume, model files, rewards, the task built once) -> ``Trainer(cfg, task).train()``.
A bad config ends with one line on stderr naming the problem (exit code 2), before any model loads; a run that
cannot go on ends with one line and exit code 1.
"""

from __future__ import annotations

import os
import sys

from grpo.cli import help_text, load_config
from grpo.errors import ConfigError, TrainingError


def launcher_quiet() -> bool | None:
    """Whether the ``accelerate launch`` that started this process was given ``-q``/``--quiet`` (read from the
    parent's command line on Linux); ``None`` when not under ``accelerate launch`` or unknown."""
    if "ACCELERATE_DYNAMO_BACKEND" not in os.environ:  # set by `accelerate launch` for the processes it starts
        return None
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(a in ("-q", "--quiet") for a in parent)


def fail(message: str, code: int, every_rank: bool = True) -> int:
    """Print the one-line error (once per job for errors every rank meets alike); under ``accelerate launch``
    also say what follows it. Returns ``code``.

    ``accelerate launch`` answers any non-zero exit of its child with a traceback of its own that repeats the
    child's stderr (exit code 1); ``accelerate launch -q`` prints nothing more. The note goes to stdout so that the
    launcher's traceback does not repeat it, and is left out under ``-q``.
    """
    if not every_rank and os.environ.get("RANK", "0") != "0":  # a config error: rank 0 says it for all
        return code
    print(f"error: {message}", file=sys.stderr, flush=True)
    if launcher_quiet() is False and os.environ.get("RANK", "0") == "0":
        print("(accelerate launch repeats this error in a traceback of its own: the error line is the cause; "
              "`accelerate launch -q ...` leaves that traceback out)", flush=True)
    return code


def main(argv: list[str]) -> int:
    """Run training with ``argv`` (the command line without the program name). Returns the exit code."""
    if "--doctor" in argv:  # sample and score a few prompts, train nothing: exit 0 with signal, 3 without
        from grpo.doctor import main as doctor

        return doctor([a for a in argv if a != "--doctor"])
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    try:
        cfg = load_config(argv)
        from grpo.preflight import preflight  # touches the disk, the model folder, the datasets

        cfg, task = preflight(cfg)
    except ConfigError as e:
        return fail(str(e), 2, every_rank=False)
    from grpo.accelerator import close_distributed
    from grpo.trainer import Trainer  # heavy imports only after the config is known to be good
    from rewards.combine import RewardError

    try:
        Trainer(cfg, task).train()
    except (TrainingError, RewardError) as e:  # a stuck run or a raising verifier: one line, no traceback
        return fail(str(e), 1)
    except ConfigError as e:  # found while loading: a model that cannot be reached, a tokenizer without a template
        return fail(str(e), 2, every_rank=False)
    close_distributed()  # every rank finished: end the process group before exit (see its docstring)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
