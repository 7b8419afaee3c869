"""Turn the ``rewards:`` config into callables and score a batch with their weighted sum.

Config forms (YAML)::

    rewards:
      accuracy: 1.0                                   # name: weight
      format: {weight: 0.1, kwargs: {prefilled_think: true}}
      my_pkg.verifiers:units: {weight: 1.0, kwargs: {tolerance: 0.01}, on_error: zero}

``on_error`` says what a reward that raises does: ``raise`` (default) stops the run with one error naming
the reward, the sample index and the exception; ``zero`` scores the failing samples 0 and counts them in
metric ``rewards/<name>/errors``. ``deadline_s`` runs the reward in the killable worker pool
(``rewards.sandbox.call_reward``): samples past the deadline score 0 and count in ``rewards/<name>/timeouts``,
and the step goes on. The spec itself is parsed by ``rewards.spec.parse_spec``.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from rewards.calling import (
    TrainerState,
    as_messages,
    as_texts,
    completion_text,
    invoke,
    is_conversational,
    note_metric_name,
)
from rewards.registry import Sink, get, import_path
from rewards.sandbox import call_reward
from rewards.spec import SpecEntry, parse_spec


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable; the message is one line naming it."""


@dataclass(frozen=True)
class RewardSpec(SpecEntry):
    """One ``rewards:`` entry (:class:`rewards.spec.SpecEntry`: name, weight, kwargs, error policy, deadline) with
    the function it resolved to."""

    fn: Callable[..., list] = field(kw_only=True)


def check_kwargs(name: str, fn: Callable, kwargs: dict) -> None:
    """Config kwargs must name explicit parameters of the reward (a ``**columns`` catch-all does not count: it
    would swallow a typo such as ``answer_fromat``).

    Raises:
        ValueError: one line naming the unknown kwarg, the closest parameter and the accepted ones.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    named = [p for p, v in params.items() if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL) and p != "completions"]
    for key in kwargs:
        if key not in named:
            close = difflib.get_close_matches(key, named, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            accepts = ", ".join(named) if named else "no kwargs"
            raise ValueError(f"reward '{name}' has no parameter '{key}'{hint}; it accepts: {accepts}")


def build_rewards(spec: dict) -> list[RewardSpec]:
    """Resolve ``{name: weight}`` / ``{name: {weight, kwargs, on_error, deadline_s}}`` into callables.

    Raises:
        KeyError: unknown reward name (the message lists the known ones).
        ValueError: a bad spec (see ``rewards.spec.parse_spec``), kwargs the function does not name, or a
            ``deadline_s`` on a function that a worker process cannot import.
    """
    out = []
    for name, value in spec.items():
        entry = parse_spec(name, value)
        fn = get(name)
        check_kwargs(name, fn, entry.kwargs)
        if entry.deadline_s is not None and import_path(fn) is None:
            raise ValueError(f"reward '{name}' has deadline_s but its function cannot be imported by a worker "
                             "process (defined in __main__ or inside a function); move it into a module")
        out.append(RewardSpec(**{f.name: getattr(entry, f.name) for f in fields(entry)}, fn=fn))
    return out


def _to_float(spec: RewardSpec, i: int, v: object) -> float:
    """One returned value as a float (NaN for ``None``); anything else is the verifier's bug."""
    if v is None:
        return math.nan
    if isinstance(v, (bool, int, float)) or (isinstance(v, Tensor) and v.numel() == 1):
        x = float(v)
        if math.isfinite(x):
            return x
    raise RewardError(f"reward '{spec.name}' returned {v!r} for sample {i}; a reward returns a finite float or None")


def _call(spec: RewardSpec, completions: list, columns: dict, context: dict, sink: Sink) -> list:
    values = invoke(spec.fn, completions, columns, {**context, **spec.kwargs}, sink)
    if not isinstance(values, (list, tuple)) or len(values) != len(completions):
        got = f"{len(values)} values" if isinstance(values, (list, tuple)) else type(values).__name__
        raise RewardError(f"reward '{spec.name}' returned {got} for {len(completions)} completions; "
                          "return a list with one float or None per completion")
    return list(values)


def _run_one(spec: RewardSpec, completions: list, columns: dict, context: dict,
             sink: Sink) -> tuple[list[float], int]:
    """Call the reward on the batch. On an exception, call it per sample to find the failing ones.

    Returns the N values (NaN = None) and the number of samples that raised (scored 0 under ``zero``).
    """
    try:
        values = _call(spec, completions, columns, context, sink)
        return [_to_float(spec, i, v) for i, v in enumerate(values)], 0
    except RewardError:
        raise
    except Exception as batch_error:  # noqa: BLE001 - a user verifier may raise anything
        out, errors = [], 0
        for i in range(len(completions)):
            one = {k: v[i : i + 1] for k, v in columns.items()}
            try:
                out.append(_to_float(spec, i, _call(spec, completions[i : i + 1], one, context, sink)[0]))
            except RewardError:
                raise
            except Exception as e:  # noqa: BLE001
                if spec.on_error == "raise":
                    # a text reward under template: chat meets TRL's message lists: say so, with the fix
                    hint = ("; under template: chat completions are message lists, as TRL passes them: read "
                            "completion[0]['content'] or decorate the reward with @rewards.accepts_messages"
                            if is_conversational(completions[i]) and isinstance(e, (AttributeError, TypeError)) else "")
                    raise RewardError(
                        f"reward '{spec.name}' failed on sample {i} ({completion_text(completions[i])[:60]!r}...): "
                        f"{type(e).__name__}: {e}{hint}; fix the verifier, or set on_error: zero for it in the config"
                    ) from None
                out.append(0.0)
                errors += 1
        if errors == 0 and spec.on_error == "raise":  # only the batch call failed: report that
            raise RewardError(f"reward '{spec.name}' failed on the batch but on no single sample: "
                              f"{type(batch_error).__name__}: {batch_error}") from None
        sink.counters["batch_errors"] = sink.counters.get("batch_errors", 0.0) + 1  # visible under on_error: zero
        return out, errors


def _run_in_workers(spec: RewardSpec, completions: list, columns: dict, context: dict,
                    sink: Sink) -> tuple[list[float], int, int]:
    """Call the reward in the killable worker pool (its ``deadline_s``). Samples of a chunk that timed out score
    0 (``timeouts``); a chunk that raised follows ``on_error`` and counts every sample it zeroed as an error.

    Returns the N values (NaN = None), the errors and the timeouts.
    """
    values = [0.0] * len(completions)
    notes: list = [None] * len(completions)
    errors = timeouts = 0
    kwargs = {**context, **spec.kwargs}  # trainer_state goes whole to every chunk; columns are split
    for part in call_reward(import_path(spec.fn), completions, columns, kwargs, spec.deadline_s):
        size = part.stop - part.start
        if part.status == "timeout":
            timeouts += size
        elif part.status != "ok":
            if spec.on_error == "raise":
                raise RewardError(f"reward '{spec.name}' failed on samples {part.start}-{part.stop - 1} in its worker "
                                  f"({part.status}: {part.error}); fix the verifier, or set on_error: zero for it")
            errors += size
        elif not isinstance(part.values, list) or len(part.values) != size:
            raise RewardError(f"reward '{spec.name}' returned {type(part.values).__name__} for {size} completions; "
                              "return a list with one float or None per completion")
        else:
            values[part.start : part.stop] = [_to_float(spec, part.start + i, v) for i, v in enumerate(part.values)]
            for key, value in (part.counters or {}).items():
                sink.counters[key] = sink.counters.get(key, 0.0) + value
            for key, value in (part.metrics or {}).items():
                sink.metrics.setdefault(key, []).extend(value)
            if part.notes is not None and len(part.notes) == size:
                notes[part.start : part.stop] = part.notes
    sink.counters["timeouts"] = sink.counters.get("timeouts", 0.0) + timeouts
    if any(n is not None for n in notes):
        sink.notes = notes
    return values, errors, timeouts


def batch_columns(rows: list[dict], prompts: list) -> dict[str, list]:
    """Dataset columns batched for a reward call: ``{column: [value per row]}``, with the prompts as
    ``prompts`` (the TRL name) instead of the rows' ``prompt``."""
    columns = {key: [row.get(key) for row in rows] for key in rows[0]} if rows else {}
    columns.pop("prompt", None)
    columns["prompts"] = list(prompts)
    return columns


def with_rollout_columns(columns: dict[str, list], completion_lengths: list[int] | None,
                         completion_ids: list[list[int]] | None, tool_calls: list[list[dict]] | None) -> dict[str, list]:
    """``columns`` plus the rollout's own columns that are given: ``completion_lengths``, ``completion_ids`` and,
    with tools, ``tool_calls`` (per completion a list of call dicts)."""
    if completion_lengths is not None:
        columns["completion_lengths"] = [int(n) for n in completion_lengths]
    if completion_ids is not None:
        columns["completion_ids"] = [list(map(int, ids)) for ids in completion_ids]
    if tool_calls is not None:
        columns["tool_calls"] = [list(calls) for calls in tool_calls]
    return columns


def score(specs: list[RewardSpec], completions: list[str], rows: list[dict], prompts: list,
          completion_lengths: list[int] | None = None, notes: list[dict] | None = None,
          completion_ids: list[list[int]] | None = None, trainer_state: TrainerState | None = None,
          tool_calls: list[list[dict]] | None = None) -> tuple[Tensor, dict[str, Tensor], dict[str, float]]:
    """Weighted sum of rewards over N completions, each reward called as TRL calls it (``rewards.calling``).

    Args:
        specs: the rewards and weights.
        completions: N completion texts.
        rows: N dataset rows (each row's columns are passed batched, e.g. ``answer=[...]``).
        prompts: N prompts: texts, or conversations (lists of message dicts, ``template: chat``); with
            conversations the completions are passed conversationally too (built-ins get text).
        completion_lengths: N completion lengths in tokens, passed as column ``completion_lengths``.
        notes: optional N dicts; each gets ``{name: note}`` for the rewards that ``annotate`` their samples
            (``accuracy``'s verdicts) or ``log_extra`` columns, for ``completions.jsonl``.
        completion_ids: N token-id lists (EOS included, no padding), passed as ``completion_ids``.
        trainer_state: passed as ``trainer_state`` (a default ``TrainerState()`` when ``None``).
        tool_calls: with tools on, per completion its calls as dicts (name, arguments, output, error, seconds,
            timed_out), passed as column ``tool_calls``; the completions are then the whole transcripts (model text
            and tool outputs). ``None`` (tools off): no such column.

    Returns:
        total (N,) float; per reward name a (N,) tensor with NaN where the reward returned ``None`` (``None``
        contributes 0 to the sum and is left out of that reward's mean); and metrics for this batch:
        ``rewards/<name>/errors`` (samples scored 0 under ``on_error: zero``), ``rewards/<name>/timeouts`` for a
        reward with ``deadline_s``, whatever each reward ``report``-ed, as ``rewards/<name>/<key>`` (e.g.
        ``rewards/accuracy/reason/right``), and the mean of what it passed to ``log_metric(key, value)``, also as
        ``rewards/<name>/<key>`` (listed by :func:`rewards.calling.logged_metric_names`).

    Raises:
        RewardError: a reward raised under ``on_error: raise``, or returned the wrong number or kind of values.
    """
    columns = with_rollout_columns(batch_columns(rows, prompts), completion_lengths, completion_ids, tool_calls)
    context = {"trainer_state": trainer_state if trainer_state is not None else TrainerState()}
    chat = bool(prompts) and is_conversational(prompts[0])
    forms = {False: as_texts(completions), True: as_messages(as_texts(completions)) if chat else None}
    total = torch.zeros(len(completions))
    per_reward: dict[str, Tensor] = {}
    metrics: dict[str, float] = {}
    for spec in specs:
        given = forms[chat and not getattr(spec.fn, "text_completions", False)]
        sink = Sink()
        if spec.deadline_s is not None:
            values, errors, _ = _run_in_workers(spec, given, columns, context, sink)
        else:
            values, errors = _run_one(spec, given, columns, context, sink)
        vec = torch.tensor(values, dtype=torch.float32)
        per_reward[spec.name] = vec
        total += spec.weight * torch.nan_to_num(vec, nan=0.0)
        metrics.update(_sink_metrics(spec.name, errors, sink))
        if notes is not None and sink.notes is not None and len(sink.notes) == len(notes):
            for note, sample_note in zip(notes, sink.notes):
                if sample_note is not None:
                    note[spec.name] = sample_note
    return total, per_reward, metrics


def _sink_metrics(name: str, errors: int, sink: Sink) -> dict[str, float]:
    """One reward's metrics of a batch: errors, summed counters, averaged ``log_metric`` values."""
    out = {f"rewards/{name}/errors": float(errors)}
    out.update({f"rewards/{name}/{key}": value for key, value in sink.counters.items()})
    for key, values in sink.metrics.items():
        if values:
            out[f"rewards/{name}/{key}"] = sum(values) / len(values)
            note_metric_name(f"rewards/{name}/{key}")
    return out
