"""Tool turns inside a decode loop: where a row's tool call ends, running the calls, and the tool-output tokens.

The backends share this bookkeeping. A row's completion is one run of ids, model tokens and tool-output tokens
interleaved, exactly as the model saw them. When the model's text since its last tool output (or since the prompt)
ends with a complete call (``Toolbox.call_end``, pre-filtered by ``Toolbox.could_end`` on the newest token), the
calls of every row that stopped at that moment run together (``Toolbox.run_many``); each rendered output is
tokenised once, on its own (never the transcript: re-tokenising a transcript can merge tokens across the
boundary, and the loss would then score tokens the sampler never drew), and its ids are appended to the row.
``tool_mask`` marks them so the loss, the KL and the model-length metrics leave them out; their sampler
log-probs are 0. Tool tokens count toward ``max_completion_length``: an output that would overflow is cut there
and the row ends truncated.

Two ways to feed the output ids back: :meth:`ToolTurns.step` forces them over the next decode steps of a batched
loop (the ``compact`` backend: the other rows keep sampling meanwhile), and :func:`tool_rounds` generates in rounds
(``hf`` and ``vllm``: every row runs to its call's end, EOS or budget; the stopped rows' calls run; the rows with
a call go on from their whole sequence, prompt + completion so far + output, as ids).

Notation: N rows, T = ``max_new`` completion columns, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor


class ToolboxLike(Protocol):
    """What a rollout needs of a toolbox (``grpo.tools.Toolbox`` is the real one)."""

    syntax: str
    max_tool_calls: int

    def call_end(self, text: str) -> bool: ...
    def could_end(self, token_text: str) -> bool: ...
    def parse(self, text: str) -> tuple[str, str] | None: ...
    def run_many(self, calls: list[tuple[str, str]]) -> list[Any]: ...
    def render(self, call: Any) -> str: ...
    def close(self) -> None: ...


# Strings at which a string-stopping engine (vLLM) pauses a row so its text can be checked for a finished call:
# the closing fence of a fenced block, the closing tag of a chat tool call. A pause that ends no call resumes.
SYNTAX_STOPS = {"fenced": ["```"], "chat": ["</tool_call>"]}


def could_end_table(toolbox: ToolboxLike, tokenizer: Any, eos_ids: list[int]) -> Tensor:
    """(len(tokenizer),) bool: ``Toolbox.could_end`` of each id's own text; EOS never ends a call. Built once per
    backend (a 150k vocabulary takes about a second), so the decode loop checks a row's text only after a token
    that can close a call."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    table = torch.tensor([toolbox.could_end(t) for t in texts], dtype=torch.bool)
    table[[i for i in eos_ids if i < len(texts)]] = False
    return table


class ToolTurns:
    """One generate call's tool turns: per-row call counts, tool masks, records and pending output ids.

    Attributes:
        tool_mask: (N, T) long on the CPU, 1 on tool-output tokens.
        calls: per row, the ``ToolCall`` records of its calls, in order.
    """

    def __init__(self, toolbox: ToolboxLike, tokenizer: Any, n_rows: int, max_new: int, eos_ids: list[int],
                 could_end_ids: Tensor | None = None):
        self.toolbox, self.tokenizer, self.max_new = toolbox, tokenizer, max_new
        self.eos_ids = set(eos_ids)
        self.tool_mask = torch.zeros((n_rows, max_new), dtype=torch.long)
        self.calls: list[list[Any]] = [[] for _ in range(n_rows)]
        self.seg_start = [0] * n_rows  # column where the row's current model segment starts
        self.pending: dict[int, list[int]] = {}  # row -> tool-output ids still to feed (compact)
        self.table = could_end_table(toolbox, tokenizer, eos_ids) if could_end_ids is None else could_end_ids

    # --- finding call ends -------------------------------------------------------------------------------------

    def could_end(self, tokens: Tensor) -> Tensor:
        """(n,) ids -> (n,) bool on the CPU: can this token end a call (:func:`could_end_table`; an id past the
        table, from a padded embedding, is always checked)."""
        ids = tokens.cpu()
        inside = ids < self.table.numel()
        return torch.where(inside, self.table[ids.clamp(max=self.table.numel() - 1)], torch.ones_like(inside))

    def may_call(self, row: int) -> bool:
        """Row ``row`` has calls left (``max_tool_calls``)."""
        return len(self.calls[row]) < self.toolbox.max_tool_calls

    def ends_call(self, segment: list[int]) -> bool:
        """True when the model text ``segment`` (ids since the last tool output) ends with a complete call."""
        return self.toolbox.call_end(self.tokenizer.decode(segment, skip_special_tokens=False))

    # --- running calls -------------------------------------------------------------------------------------------

    def run(self, rows: list[int], segments: list[list[int]]) -> list[list[int]]:
        """Run the calls ending ``segments`` (one per row of ``rows``) together. -> each row's output ids.

        Each rendered output is tokenised on its own, once; the call is recorded on its row.
        """
        texts = [self.tokenizer.decode(s, skip_special_tokens=False) for s in segments]
        parsed = [self.toolbox.parse(t) for t in texts]
        # call_end said "complete call", so parse finds one; a toolbox that disagrees gets an empty call, not a crash
        results = self.toolbox.run_many([p if p is not None else ("", t) for p, t in zip(parsed, texts)])
        rendered = [self.toolbox.render(c) for c in results]
        ids = self.tokenizer(rendered, add_special_tokens=False)["input_ids"] if rendered else []
        for row, call in zip(rows, results):
            self.calls[row].append(call)
        return [list(x) for x in ids]

    # --- the compact backend: output ids forced over the next steps ----------------------------------------------

    def step(self, live: Tensor, t: int, token: Tensor, logp: Tensor, out: Tensor,
             done: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One decode step of the live rows: rows with pending output ids take their next one instead of the
        sampled token (log-prob 0, tool_mask 1); rows whose text now ends a call run it (all together) and get its
        ids pending from step t + 1.

        Args:
            live: (n,) original row of each live sequence; t: the column being written; token, logp: (n,) sampled;
            out: (N, T) ids written so far (columns < t); done: (n,) rows past their EOS (not dropped yet).

        Returns:
            token, logp (n,) as the row takes them and forced (n,) bool (True on tool-output tokens).
        """
        rows = live.tolist()
        forced = torch.zeros(len(rows), dtype=torch.bool)
        ids = token.cpu().clone()
        for j, row in enumerate(rows if self.pending else ()):
            queue = self.pending.get(row)
            if queue:
                ids[j] = queue.pop(0)
                forced[j] = True
                self.tool_mask[row, t] = 1
                if not queue:
                    del self.pending[row]
                    self.seg_start[row] = t + 1
        if t + 1 < self.max_new:  # a call ending in the last column has no room for its output: not run
            self._start_calls(rows, t, ids, forced | done.cpu(), out)
        forced_dev = forced.to(token.device)
        return ids.to(token.device), logp.masked_fill(forced_dev, 0.0), forced_dev

    def _start_calls(self, rows: list[int], t: int, ids: Tensor, skip: Tensor, out: Tensor) -> None:
        """Find the rows whose model text ends a call at column t (rows in ``skip`` aside: forced or finished),
        run their calls together, queue the output ids."""
        candidates = self.could_end(ids) & ~skip
        ended, segments = [], []
        for j in candidates.nonzero().flatten().tolist():
            row = rows[j]
            if not self.may_call(row):
                continue
            segment = out[row, self.seg_start[row]: t].tolist() + [int(ids[j])]
            if self.ends_call(segment):
                ended.append(row)
                segments.append(segment)
        if not ended:
            return
        for row, output in zip(ended, self.run(ended, segments)):
            if output:
                self.pending[row] = output
            else:  # an empty output: the next model segment starts right away
                self.seg_start[row] = t + 1

    # --- the round-based backends (hf, vllm) ----------------------------------------------------------------------

    def scan(self, row: int, out: Tensor, length: int, new: list[int]) -> tuple[int, str]:
        """Where row ``row``'s newly generated ids ``new`` (after its ``length`` ids in ``out`` (N, T)) stop:
        -> (ids kept, why) with why ``eos`` (the first EOS), ``call`` (the first complete call) or ``open``
        (neither: all of ``new`` is kept)."""
        may_call = self.may_call(row)
        candidates = self.could_end(torch.tensor(new, dtype=torch.long)).tolist() if may_call and new else []
        prefix = out[row, self.seg_start[row]: length].tolist() if may_call else []
        for k, tok in enumerate(new):
            if tok in self.eos_ids:
                return k + 1, "eos"
            if may_call and candidates[k] and self.ends_call(prefix + new[: k + 1]):
                return k + 1, "call"
        return len(new), "open"

    def stop_check(self, row: int, out: Tensor, length: int) -> Callable[[list[int]], bool]:
        """For an engine that can stop a row mid-generation: ``check(new_ids)`` is True when row ``row``'s text
        ends a call after ``new_ids`` (the ids generated so far this round)."""
        prefix = out[row, self.seg_start[row]: length].tolist()
        may_call = self.may_call(row)
        return lambda new: may_call and bool(new) and self.ends_call(prefix + new)


# One generation round of a round-based backend: (ids (n, W) left-padded, mask (n, W), most new tokens this round,
# per-row stop checks) -> new ids (n, k), their sampler log-probs (n, k) and, per row, the number of ids it wrote
# when the engine paused it at a SYNTAX_STOPS string (it resumes when no call ended there), else None; or None.
RoundFn = Callable[[Tensor, Tensor, int, list[Callable[[list[int]], bool]]],
                   tuple[Tensor, Tensor, list[int | None] | None]]


def round_inputs(prompt_ids: Tensor, prompt_mask: Tensor, out: Tensor, lengths: list[int],
                 rows: list[int], pad_id: int) -> tuple[Tensor, Tensor]:
    """Each row's whole sequence so far (its real prompt ids, then its completion ids), left-padded.
    prompt_ids, prompt_mask (N, P), out (N, T) -> ids, mask (len(rows), W) on the prompt's device."""
    seqs = [torch.cat([prompt_ids[r][prompt_mask[r].bool()], out[r, : lengths[r]].to(prompt_ids.device)])
            for r in rows]
    width = max(s.numel() for s in seqs)
    ids = prompt_ids.new_full((len(rows), width), pad_id)
    mask = torch.zeros_like(ids)
    for j, s in enumerate(seqs):
        ids[j, width - s.numel():] = s
        mask[j, width - s.numel():] = 1
    return ids, mask


def tool_rounds(turns: ToolTurns, generate_round: RoundFn, prompt_ids: Tensor, prompt_mask: Tensor,
                pad_id: int) -> tuple[Tensor, Tensor]:
    """Generate in rounds until every row has ended (EOS, its budget, or a stop that is not a call): after each
    round the rows that ended a call run their calls together, get the output ids appended, and go on.

    prompt_ids, prompt_mask (N, P) -> completion ids (N, T) and sampler log-probs (N, T) (0 on tool tokens);
    ``turns`` holds the tool mask and the calls.
    """
    N, T = prompt_ids.size(0), turns.max_new
    out = torch.full((N, T), pad_id, dtype=torch.long)
    out_logp = torch.zeros((N, T), dtype=torch.float32)
    lengths = [0] * N
    active = list(range(N))
    while active:
        ids, mask = round_inputs(prompt_ids, prompt_mask, out, lengths, active, pad_id)
        checks = [turns.stop_check(r, out, lengths[r]) for r in active]
        new, new_logp, paused = generate_round(ids, mask, max(T - lengths[r] for r in active), checks)
        new, new_logp = new.cpu(), new_logp.cpu().float()
        paused = paused or [None] * len(active)
        ended, going_on = [], []
        for j, row in enumerate(active):
            room = T - lengths[row] if paused[j] is None else min(T - lengths[row], paused[j])
            kept, why = turns.scan(row, out, lengths[row], new[j, :room].tolist())
            out[row, lengths[row]: lengths[row] + kept] = new[j, :kept]
            out_logp[row, lengths[row]: lengths[row] + kept] = new_logp[j, :kept]
            lengths[row] += kept
            if lengths[row] < T and why == "call":
                ended.append(row)
            elif lengths[row] < T and why == "open" and paused[j] is not None:
                going_on.append(row)  # paused at a stop string that ended no call: resume
        segments = [out[r, turns.seg_start[r]: lengths[r]].tolist() for r in ended]
        for row, output in zip(ended, turns.run(ended, segments) if ended else []):
            output = output[: T - lengths[row]]  # an output that would overflow is cut: the row ends truncated
            out[row, lengths[row]: lengths[row] + len(output)] = torch.tensor(output, dtype=torch.long)
            turns.tool_mask[row, lengths[row]: lengths[row] + len(output)] = 1
            lengths[row] += len(output)
            turns.seg_start[row] = lengths[row]
            if lengths[row] < T:
                going_on.append(row)
        active = sorted(going_on)
    return out.to(prompt_ids.device), out_logp.to(prompt_ids.device)
