"""How a reward function is called: TRL's ``GRPOTrainer`` convention (TRL 1.16), so functions move both ways.

A reward gets keyword arguments only::

    fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=..., log_metric=...,
       completion_lengths=..., **dataset_columns, **config_kwargs) -> list[float | None]

- ``completions`` / ``prompts``: strings, or, when the prompt is a conversation (``template: chat``), TRL's
  conversational form: each prompt a list of messages, each completion ``[{"role": "assistant", "content": text}]``.
- ``completion_ids``: one list of token ids per completion (EOS included, padding not), as TRL passes them.
- ``tool_calls`` (only when the run has ``tools``): per completion a list of its tool calls, each a dict with
  ``name``, ``arguments``, ``output``, ``error``, ``seconds``, ``timed_out``; the completion text is then the whole
  transcript, model text and tool outputs in order. A reward that does not name it gets it in ``**kwargs``.
- ``trainer_state``: a :class:`TrainerState` (``global_step``, ``max_steps``, ``epoch``), read-only by convention.
- ``log_extra(column, values)``: one value per sample, written to ``completions.jsonl`` under the reward's name.
- ``log_metric(name, value)``: a scalar, averaged over the step's calls and logged as ``rewards/<reward>/<name>``.
- ``async def`` rewards are awaited.

Built-in rewards read text: :func:`accepts_messages` lets them take either completion form (one place, not in
every reward).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from rewards.registry import Sink, collect

# Keyword arguments that TRL passes besides the dataset columns; also the names a dataset column may not take.
CALL_KEYS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")


@dataclass(frozen=True)
class TrainerState:
    """What TRL's ``trainer_state`` offers a reward for shaping by progress (the fields rewards use).

    Attributes:
        global_step: optimizer steps finished before this batch was sampled (0 for the first batch), as TRL.
        max_steps: the run's ``max_steps``.
        epoch: passes over the train rows so far (fractional), as TRL's ``state.epoch``.
    """

    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0


def is_conversational(prompt: object) -> bool:
    """True for TRL's conversational form: a list of ``{"role", "content"}`` dicts."""
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict) and "role" in prompt[0]


def as_messages(completions: list[str]) -> list[list[dict]]:
    """Completion texts in TRL's conversational form: ``[[{"role": "assistant", "content": text}], ...]``."""
    return [[{"role": "assistant", "content": text}] for text in completions]


def completion_text(completion: object) -> str:
    """The text of one completion in either form (a conversational one: its messages' contents joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return "" if completion is None else str(completion)


def as_texts(completions: list) -> list[str]:
    """Completions as strings, whichever form they came in (see :func:`completion_text`)."""
    return [completion_text(c) for c in completions]


def accepts_messages(fn: Callable[..., list]) -> Callable[..., list]:
    """Wrap a text reward so it also takes conversational completions (turned to text before the call).

    Example:
        >>> f = accepts_messages(lambda completions, **kw: [len(c) for c in completions])
        >>> f(completions=[[{"role": "assistant", "content": "abc"}]])
        [3]
    """
    if getattr(fn, "text_completions", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args, completions: list | None = None, **kwargs):
        if completions is None and args:  # TRL passes keywords, a direct call may pass completions first
            completions, args = args[0], args[1:]
        return fn(*args, completions=as_texts(completions or []), **kwargs)

    wrapper.text_completions = True  # type: ignore[attr-defined]
    return wrapper


def _run_coroutine(coro: object) -> object:
    """Await ``coro`` from sync code: ``asyncio.run`` here, or in a helper thread when a loop already runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def invoke(fn: Callable[..., object], completions: list, columns: dict, kwargs: dict, sink: Sink | None = None) -> list:
    """Call a reward the way TRL does and collect what it logs into ``sink``.

    Args:
        fn: the reward (sync or ``async def``).
        completions: N completions (strings or conversational).
        columns: batched columns (``prompts``, dataset columns, ``completion_ids``...) and ``trainer_state``.
        kwargs: the config's kwargs for this reward.
        sink: where ``report``/``annotate``/``log_extra``/``log_metric`` land (a fresh one when ``None``).

    Returns:
        what ``fn`` returned (awaited when it is a coroutine); the caller checks it. ``log_extra`` columns are
        merged into ``sink.notes`` (one dict per sample).
    """
    with collect(sink) as s:
        extra: dict[str, list] = {}

        def log_extra(column: str, values: list) -> None:
            extra.setdefault(str(column), []).extend(list(values))

        def log_metric(name: str, value: float) -> None:
            s.metrics.setdefault(str(name), []).append(float(value))

        values = fn(completions=completions, log_extra=log_extra, log_metric=log_metric, **columns, **kwargs)
        if inspect.isawaitable(values):
            values = _run_coroutine(values)
        _merge_extra(s, extra, len(completions))
    return values  # type: ignore[return-value]


def _merge_extra(sink: Sink, extra: dict[str, list], n: int) -> None:
    """``log_extra`` columns into the sink's per-sample notes; a column of the wrong length is left out."""
    columns = {k: v for k, v in extra.items() if len(v) == n}
    if not columns:
        return
    notes = sink.notes if sink.notes is not None and len(sink.notes) == n else [None] * n
    sink.notes = [{**(note if isinstance(note, dict) else {}), **{k: v[i] for k, v in columns.items()}}
                  for i, note in enumerate(notes)]


_LOGGED_METRICS: set[str] = set()


def note_metric_name(key: str) -> None:
    """Remember that metric ``key`` came from ``log_metric``: ranks average it instead of summing it."""
    _LOGGED_METRICS.add(key)


def logged_metric_names() -> frozenset[str]:
    """The ``rewards/<reward>/<name>`` metrics logged through ``log_metric`` so far in this process."""
    return frozenset(_LOGGED_METRICS)
