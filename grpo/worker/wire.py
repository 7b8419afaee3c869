"""Scored batches as plain data, for the pipe between the worker and the trainer and for checkpoints.

A payload holds only tensors, strings, numbers, lists and dicts, so it loads with ``torch.load(weights_only=True)``
(no code runs when a checkpoint's in-flight batches are read back). Dataset rows travel as one JSON string: they may
hold any JSON value, and the trainer only logs them (the rewards were computed in the worker).

Notation: N = B x G rows of one batch, T completion tokens.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import torch
from torch import Tensor

from grpo.batch import RolloutBatch, StepBatch


def batch_payload(batch: StepBatch, metrics: dict[str, float], step: int, version: int,
                  stream_state: dict[str, Any], worker_wait_s: float) -> dict[str, Any]:
    """Batch ``step`` (sampled from the weights after step ``version``) as plain data, with its round metrics and
    the worker's data-stream position after it. -> payload dict."""
    r = batch.rollout
    tensors = {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if isinstance(getattr(r, f.name), Tensor)}
    texts = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)
             if f.name not in tensors and getattr(r, f.name) is not None}
    if r.tool_calls is not None:  # ToolCall records as plain dicts (tools on)
        texts["tool_calls"] = r.tool_records()
    return {"step": step, "version": version, "group_size": batch.group_size, "rollout": tensors,
            "rollout_json": json.dumps(texts), "rows_json": json.dumps(batch.rows, default=str),
            "rewards": batch.rewards, "per_reward": dict(batch.per_reward), "metrics": dict(metrics),
            "stream": json.dumps(stream_state), "worker_wait_s": float(worker_wait_s)}


def batch_from_payload(payload: dict[str, Any]) -> StepBatch:
    """The :class:`StepBatch` a payload holds (rollout of N rows, rewards (N,), per-reward scores)."""
    fields = {**payload["rollout"], **json.loads(payload["rollout_json"])}
    if fields.get("tool_calls") is not None:
        from grpo.tools.calls import ToolCall

        fields["tool_calls"] = [[ToolCall(**c) for c in calls] for calls in fields["tool_calls"]]
    rollout = RolloutBatch(**fields)
    return StepBatch(rollout, json.loads(payload["rows_json"]), int(payload["group_size"]), payload["rewards"],
                     dict(payload["per_reward"]))


def to_bytes(payload: dict[str, Any]) -> bytes:
    """A payload serialised for the pipe (torch's format: tensors as raw storage, no per-element pickling)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def from_bytes(data: bytes) -> dict[str, Any]:
    """A payload back from :func:`to_bytes`, through torch's restricted (``weights_only``) unpickler."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
