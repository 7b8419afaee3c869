"""The record of one tool call; imports nothing from the package."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ToolCall:
    """One tool call made during a completion.

    Attributes:
        name: the tool's name as the model wrote it (``python``, ``calculator``, a plug-in's name; ``""`` when the
            call could not be read, e.g. malformed JSON in the chat syntax).
        arguments: the raw argument text the model wrote (the code, the expression, or the JSON arguments).
        output: what the tool returned, already capped to the output limit (on failure, the error text the model
            sees).
        error: one line when the call failed (exception, crash, limit hit, unknown tool), else ``None``.
        seconds: wall-clock time of the call.
        timed_out: the call hit its wall-clock limit and was killed.
    """

    name: str
    arguments: str
    output: str = ""
    error: str | None = None
    seconds: float = 0.0
    timed_out: bool = False

    def as_record(self) -> dict:
        """A JSON-ready dict of the fields (the rewards' ``tool_calls`` column, ``completions.jsonl``)."""
        return asdict(self)
