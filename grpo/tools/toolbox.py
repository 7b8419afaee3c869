"""The tools of a run: how their calls look in text, running them, and writing their outputs back.

``build_toolbox(["python", "calculator"])`` resolves the tools (``grpo/tools/registry.py``), picks the syntax
(``grpo/tools/syntax.py``) and, when ``python`` is among them, makes the sandbox (``grpo/tools/sandbox.py``; its
fork servers start on the first call or on :meth:`Toolbox.isolation`). Built only when the config lists tools: with
tools off nothing of this package is imported or started.
"""

from __future__ import annotations

import atexit
import json
import time
from concurrent.futures import ThreadPoolExecutor

from grpo.errors import ConfigError
from grpo.tools.calls import ToolCall
from grpo.tools.registry import Tool, json_schema, resolve
from grpo.tools.syntax import get_syntax

MALFORMED = {  # what the model is told when a call cannot be read (name "")
    "chat": 'malformed tool call: write <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call> with valid JSON',
    "fenced": "malformed tool call: write a block that opens with ```<tool> on its own line and closes with ```",
}


class Toolbox:
    """The tools of a run, how calls look in text, and how outputs are written back.

    Attributes:
        syntax: ``"fenced"`` (base models) or ``"chat"`` (the chat template's tool-call format).
        max_tool_calls: calls allowed per completion (the rollout enforces it).
        names: the tools' names, as the model writes them.
        max_output_chars: output kept per call.
    """

    def __init__(self, tools: list[Tool], syntax: str, max_tool_calls: int, max_output_chars: int, workers: int,
                 sandbox=None, tokenizer=None):
        self.tools = {t.name: t for t in tools}
        self.names = [t.name for t in tools]
        self.syntax = syntax
        self.max_tool_calls = max_tool_calls
        self.max_output_chars = max_output_chars
        self.workers = workers
        self.sandbox = sandbox
        self.parser = get_syntax(syntax)(self.names, tokenizer)
        # In-process tools (calculator, plug-ins) run here; its threads start on first use.
        self.executor: ThreadPoolExecutor | None = ThreadPoolExecutor(workers, thread_name_prefix="grpo-tool")
        atexit.register(self.close)

    def could_end(self, token_text: str) -> bool:
        """Cheap pre-filter for the decode loop: can a token with this text end a call?"""
        return self.parser.could_end(token_text)

    def call_end(self, text: str) -> bool:
        """Does ``text`` (the model's text since its last tool output, or since the prompt) end with a complete
        tool call? Looks only at the end of the text."""
        return self.parser.parse(text) is not None

    def parse(self, text: str) -> tuple[str, str] | None:
        """(tool name, arguments) of the call ending ``text``, or ``None``."""
        return self.parser.parse(text)

    def render(self, call: ToolCall) -> str:
        """The text appended after the call, which the model then continues from."""
        return self.parser.render(call)

    @property
    def schemas(self) -> list[dict]:
        """The tools' JSON schemas, for ``tokenizer.apply_chat_template(..., tools=toolbox.schemas)``."""
        for tool in self.tools.values():
            if tool.schema is None:
                tool.schema = json_schema(tool)
        return [t.schema for t in self.tools.values()]

    def isolation(self) -> dict:
        """What the python sandbox isolates on this machine (starts its servers); ``{}`` without ``python``."""
        return self.sandbox.isolation() if self.sandbox is not None else {}

    def run_many(self, calls: list[tuple[str, str]]) -> list[ToolCall]:
        """Run ``calls`` ((name, arguments) pairs) concurrently; one :class:`ToolCall` each, in order. Never raises."""
        out: list[ToolCall | None] = [None] * len(calls)
        python = []
        for i, (name, args) in enumerate(calls):
            if name == "python" and "python" in self.tools:
                code, error = self._python_code(args)
                if error is None:
                    python.append((i, code))
                else:
                    out[i] = ToolCall(name, args, error, error)
        in_sandbox = {i for i, _ in python}
        others = [i for i in range(len(calls)) if out[i] is None and i not in in_sandbox]
        futures = {i: self.executor.submit(self._run_local, *calls[i]) for i in others} if self.executor else {}
        for i in others:
            if i not in futures:  # closed: run here, still never raise
                out[i] = self._run_local(*calls[i])
        if python:  # meanwhile, in this thread: the sandboxed calls
            for (i, _), call in zip(python, self.sandbox.run([code for _, code in python])):
                call.arguments = calls[i][1]
                out[i] = call
        for i, future in futures.items():
            out[i] = future.result()
        return out

    def _python_code(self, args: str) -> tuple[str, str | None]:
        """The code of a python call: the block's text (fenced) or the ``code`` argument (chat)."""
        if self.syntax != "chat":
            return args, None
        try:
            code = json.loads(args)["code"]
            if not isinstance(code, str):
                raise TypeError
            return code, None
        except (ValueError, KeyError, TypeError):
            return "", 'python: the arguments must be {"code": "<program>"}'

    def _run_local(self, name: str, args: str) -> ToolCall:
        """An in-process call (calculator, plug-ins); its exception becomes the error line."""
        start = time.monotonic()
        tool = self.tools.get(name)
        if tool is None:
            known = ", ".join(self.names)
            error = MALFORMED[self.syntax] if name == "" else f"unknown tool {name!r}; available: {known}"
            return ToolCall(name, args, error, error)
        try:
            if self.syntax == "chat":
                kwargs = json.loads(args)
                value = tool.fn(**kwargs)
            else:
                value = tool.fn(args)
            output, error = ("" if value is None else str(value)), None
        except Exception as e:  # noqa: BLE001 - whatever the tool raises is the model's feedback
            error = f"{type(e).__name__}: {e}".splitlines()[0][:300] if str(e) else type(e).__name__
            output = error
        if len(output) > self.max_output_chars:
            output = output[: self.max_output_chars] + f"\n[output truncated: {len(output)} characters]"
        return ToolCall(name, args, output, error, time.monotonic() - start)

    def close(self) -> None:
        """Stop the sandbox's processes and the thread pool (idempotent; also registered with ``atexit``)."""
        if self.sandbox is not None:
            self.sandbox.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


def _check(syntax: str, max_tool_calls: int, timeout_s: float, memory_mb: int, max_output_chars: int,
           workers: int) -> None:
    """One line per bad setting, naming the config key."""
    get_syntax(syntax)  # unknown tool_syntax 'x'; known: chat, fenced
    for key, value, low in (("max_tool_calls", max_tool_calls, 1), ("tool_timeout_s", timeout_s, 0.01),
                            ("tool_memory_mb", memory_mb, 64), ("tool_max_output_chars", max_output_chars, 1),
                            ("tool_workers", workers, 1)):
        if not isinstance(value, (int, float)) or value < low:
            raise ConfigError(f"{key} must be at least {low}, got {value!r}")


def build_toolbox(specs: list[str], *, syntax: str = "fenced", max_tool_calls: int = 4, timeout_s: float = 5.0,
                  memory_mb: int = 512, max_output_chars: int = 2000, workers: int = 2, tokenizer=None,
                  preload: tuple[str, ...] = ()) -> Toolbox:
    """The toolbox for ``specs``: built-ins by name (``python``, ``calculator``) or plug-ins ``"module:function"`` /
    ``"module.function"``.

    Args:
        syntax: ``"fenced"`` or ``"chat"``; tokenizer: the one whose chat template renders tool turns (chat).
        timeout_s, memory_mb, max_output_chars, workers: the python sandbox's limits and concurrency (the output
            cap applies to every tool); preload: modules its servers import once (e.g. ``("sympy",)``).

    Raises:
        ConfigError (a ValueError): an unknown tool, an unimportable plug-in, two tools with one name, a bad
            setting; one line naming it and the fix.
    """
    _check(syntax, max_tool_calls, timeout_s, memory_mb, max_output_chars, workers)
    if not specs:
        raise ConfigError("tools: the list is empty; name at least one tool (python, calculator) or leave tools out")
    tools = [resolve(s) for s in specs]
    names = [t.name for t in tools]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"tools: two tools are named {dup!r}; a model calls tools by name, so names must differ")
    sandbox = None
    if "python" in names:
        from grpo.tools.sandbox import PythonSandbox

        sandbox = PythonSandbox(workers, timeout_s, memory_mb, max_output_chars, tuple(preload))
    box = Toolbox(tools, syntax, int(max_tool_calls), int(max_output_chars), int(workers), sandbox, tokenizer)
    if syntax == "chat":
        box.schemas  # noqa: B018 - a plug-in without type hints or docstring fails here, at build time
    return box
