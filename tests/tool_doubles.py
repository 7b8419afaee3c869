"""A test double of ``grpo.tools.Toolbox`` for rollout tests on random models: calls end at pseudo-random places
(a stable hash of the text), outputs have seeded pseudo-random lengths and sometimes hold an EOS, some calls fail
or time out. Everything is a pure function of the text, so every backend and every check agrees on it."""

from __future__ import annotations

import random
import zlib
from dataclasses import asdict, dataclass


@dataclass
class FakeCall:
    """The fields of ``grpo.tools.ToolCall``."""

    name: str
    arguments: str
    output: str = ""
    error: str | None = None
    seconds: float = 0.0
    timed_out: bool = False

    def as_record(self) -> dict:
        return asdict(self)


def _h(text: str) -> int:
    return zlib.crc32(text.encode())


class FakeToolbox:
    """Calls end where ``crc32(text) % every == 0`` after a token whose text is a digit; the output is
    ``seed``-random digits and spaces of 0..``max_len`` characters (one in five also holds the EOS text ``eos``);
    one call in seven errors, one in eleven times out."""

    syntax = "fenced"

    def __init__(self, *, every: int = 6, max_len: int = 14, max_tool_calls: int = 3, seed: int = 0,
                 eos: str = "</s>"):
        self.every, self.max_len, self.max_tool_calls, self.seed, self.eos = every, max_len, max_tool_calls, seed, eos
        self.names = ["echo"]
        self.batches: list[int] = []  # size of each run_many call
        self.closed = 0

    def could_end(self, token_text: str) -> bool:
        return token_text.strip().isdigit()

    def call_end(self, text: str) -> bool:
        return bool(text) and text[-1].isdigit() and _h(text) % self.every == 0

    def parse(self, text: str) -> tuple[str, str] | None:
        return ("echo", text) if self.call_end(text) else None

    def run_many(self, calls: list[tuple[str, str]]) -> list[FakeCall]:
        self.batches.append(len(calls))
        out = []
        for name, args in calls:
            rng = random.Random(_h(args) + self.seed)
            if rng.random() < 1 / 7:
                out.append(FakeCall(name, args, "", error="ZeroDivisionError: division by zero", seconds=0.01))
                continue
            text = "".join(rng.choice("0123456789 ") for _ in range(rng.randint(0, self.max_len)))
            if rng.random() < 0.2:
                text += self.eos + "7"
            timed_out = rng.random() < 1 / 11
            out.append(FakeCall(name, args, "" if timed_out else text, error="timed out after 5 s" if timed_out else
                                None, seconds=0.02, timed_out=timed_out))
        return out

    def render(self, call: FakeCall) -> str:
        return "\n" + (call.error if call.error else call.output) + "\n"

    def close(self) -> None:
        self.closed += 1
