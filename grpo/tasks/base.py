"""The task object and its streams: a frozen :class:`Task`, an endless :class:`PromptStream` for generated
problems and a :class:`DatasetStream` over a finite dataset. Both streams are seeded and resumable."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grpo.errors import DataError

Render = Callable[[dict, Any], dict]  # (row, tokenizer or None) -> row with its "prompt"


class PromptStream:
    """An endless, seeded stream of generated train rows; ``state_dict`` records the position for exact resume."""

    def __init__(self, make_row: Callable[[random.Random], dict], seed: int, exclude: set[str] | None = None):
        self.make_row = make_row
        self.rng = random.Random(seed)
        self.exclude = exclude or set()
        self.rows_served = 0

    def take(self, n: int) -> list[dict]:
        """Return the next ``n`` rows (never one whose ``question`` is in ``exclude``)."""
        rows = []
        while len(rows) < n:
            row = self.make_row(self.rng)
            if row["question"] not in self.exclude:
                rows.append(row)
        self.rows_served += n
        return rows

    def state_dict(self) -> dict:
        """The position as plain data (the RNG state and the count of rows served)."""
        return {"rng": self.rng.getstate(), "rows_served": self.rows_served}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict`."""
        rng_state = state["rng"]
        # JSON/YAML round-trips turn the inner tuple into a list; random wants tuples.
        self.rng.setstate((rng_state[0], tuple(rng_state[1]), rng_state[2]))
        self.rows_served = state["rows_served"]


class DatasetStream:
    """An endless stream over a finite list of rows: shuffled with the seed, a fresh shuffle every epoch.

    ``state_dict`` is plain ints (epoch, position), so a checkpoint stores it as JSON and a resumed run
    continues with exactly the rows an uninterrupted run would have taken.
    """

    def __init__(self, rows: list[dict], seed: int, render: Callable[[dict], dict] | None = None):
        if not rows:
            raise DataError("the train split has no rows; check task_kwargs (path, split, filters)")
        self.rows = rows
        self.seed = seed
        self.render = render or (lambda row: dict(row))
        self.epoch = self.pos = self.rows_served = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[dict]:
        """Return the next ``n`` rows (each a fresh dict with its ``prompt``), starting a new epoch when one ends."""
        out = []
        for _ in range(n):
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            out.append(self.render(self.rows[self._order[self.pos]]))
            self.pos += 1
        self.rows_served += n
        return out

    def state_dict(self) -> dict:
        """The position as plain ints."""
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos, "rows_served": self.rows_served}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict`."""
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]
        self.rows_served = state["rows_served"]
        self._order = self._permutation(self.epoch)


@dataclass(frozen=True)
class Task:
    """A task, built in one step and never changed: train rows, held-out eval rows and how prompts are rendered.

    Attributes:
        name: the registered name.
        make_row: generated tasks: draws one train row from an RNG (``None`` for dataset tasks).
        train: dataset tasks: the normalised train rows (without prompts).
        evals: the held-out rows (without prompts for dataset tasks).
        exclude: generated tasks: questions the train stream never serves (the eval set).
        render: ``(row, tokenizer) -> row with "prompt"``; ``None`` when rows carry their prompt already.
        template: the prompt template of a dataset task (``None``: the task's own prompt).
        prefill_think: prompts end inside ``<think>``.
        system_prompt: the ``chat`` template's system prompt (a name such as ``r1`` sets the reward defaults).
        stats: row counts (``train_rows``, ``eval_rows``, ``bad_rows_skipped``).
        columns: the columns every row carries (besides ``prompt``), passed to rewards.
    """

    name: str
    evals: list[dict]
    make_row: Callable[[random.Random], dict] | None = None
    train: list[dict] = field(default_factory=list)
    exclude: frozenset[str] = frozenset()
    render: Render | None = None
    template: str | None = None
    prefill_think: bool = False
    system_prompt: str | None = None
    stats: dict[str, int] = field(default_factory=dict)
    columns: tuple[str, ...] = ()

    def train_stream(self, seed: int, tokenizer: Any = None) -> PromptStream | DatasetStream:
        """An endless, resumable stream of train rows for one process (``seed`` differs per rank).

        ``tokenizer`` renders ``chat``-template prompts (the model's chat template); other templates ignore it.
        """
        if self.make_row is not None:
            return PromptStream(self.make_row, seed, exclude=set(self.exclude))
        render = self.render
        return DatasetStream(self.train, seed, None if render is None else (lambda row: render(row, tokenizer)))

    def eval_rows(self, tokenizer: Any = None) -> list[dict]:
        """The held-out rows, each with its ``prompt`` (fixed: the same for every run and every seed)."""
        if self.render is None:
            return self.evals
        return [self.render(row, tokenizer) for row in self.evals]
