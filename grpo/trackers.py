"""The experiment trackers ``report_to`` may name, and which of them are installed (a lookup, not an import)."""

from __future__ import annotations

import importlib.util

# report_to name -> (modules any of which makes it work, the pip extra that installs one)
TRACKERS = {"tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"), "wandb": (("wandb",), "wandb"),
            "trackio": (("trackio",), "trackio")}


def installed(modules: tuple[str, ...]) -> bool:
    """True when any of ``modules`` can be imported (looked up, not imported)."""
    return any(importlib.util.find_spec(m) is not None for m in modules)


def report_to_list(report_to: list | str | None) -> list[str]:
    """Tracker names from ``report_to``: None/'none' -> [], 'all' -> every installed tracker, else as given."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = [str(n).strip().lower() for n in names]
    if "all" in names:
        return [t for t, (modules, _) in TRACKERS.items() if installed(modules)]
    return list(dict.fromkeys(n for n in names if n and n != "none"))
