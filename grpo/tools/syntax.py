"""How tool calls look in text: finding a complete call at the end of a completion, and writing the output back.

Two syntaxes, registered by name (the ``tool_syntax`` config key):

- ``fenced`` (base models, as in ToRL): a fenced block whose info string is a tool's name, then the output block
  the rollout appends::

      ```python
      print(3*7)
      ```
      ```output
      21
      ```

  A call is complete when the text ends with a closing fence on its own line (trailing whitespace allowed) whose
  opening fence names a tool. A block for any other name (```text, ```output) is not a call.
- ``chat`` (instruct models): the Hermes/Qwen format that TRL's response schemas parse,
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. The output is written back as the chat template's
  own tool-response turn: rendered once per tool name from a dummy conversation (the text between the assistant's
  ``</tool_call>`` and the next assistant turn, with the output in place of a marker), as TRL renders the tool
  suffix from a dummy conversation, so it matches what the template produces for such a transcript. Without a
  tokenizer, or with a template that renders no tool turn, it falls back to a Qwen-style
  ``\\n<tool_response>\\n...\\n</tool_response>\\n`` block inside the assistant's turn.

``could_end`` and ``call_end`` run for decoded tokens, so they only look at the end of the text.
"""

from __future__ import annotations

import json

from grpo.registry import make_registry
from grpo.tools.calls import ToolCall

SYNTAXES, register_syntax, get_syntax = make_registry("tool_syntax")
FENCE = "```"
_SPACE = " \t\r\n"
MARKER = "\u2063TOOL-OUTPUT\u2063"  # stands for the output while the template renders; any text the template keeps


def _end(text: str) -> int:
    """Index just past the last non-whitespace character of ``text``."""
    end = len(text)
    while end and text[end - 1] in _SPACE:
        end -= 1
    return end


@register_syntax("fenced")
class FencedSyntax:
    """```name ... ``` blocks (ToRL style); ``names`` are the tools' names."""

    def __init__(self, names: list[str], tokenizer=None):
        self.names = set(names)

    def could_end(self, token_text: str) -> bool:
        """Can a token with this text end a call? Only a backtick closes a fence."""
        return "`" in token_text

    def parse(self, text: str) -> tuple[str, str] | None:
        """(tool name, code) of the call that ends ``text``; ``None`` if it does not end with a complete call."""
        end = _end(text)
        close = end - len(FENCE)
        if close < 0 or not text.startswith(FENCE, close) or (close and text[close - 1] != "\n"):
            return None
        start = text.rfind(FENCE, 0, close)
        if start < 0:
            return None
        line_end = text.find("\n", start, close)
        if line_end < 0:
            return None
        name = text[start + len(FENCE):line_end].strip()
        if name not in self.names:
            return None
        return name, text[line_end + 1:close].rstrip("\n")

    def render(self, call: ToolCall) -> str:
        """The output block appended after the call's closing fence."""
        return f"\n```output\n{call.output.rstrip(chr(10))}\n```\n"


def _template_turn(tokenizer, name: str) -> tuple[str, str] | None:
    """(text before, text after) the output in the template's tool turn after a call to ``name``; ``None`` when
    the template has no tool turn we can cut out (no template, no ``</tool_call>``, or a non-prefix rendering)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return None
    call = {"type": "function", "function": {"name": name, "arguments": {}}}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    tool = {"role": "tool", "name": name, "content": MARKER}
    try:
        full = tokenizer.apply_chat_template(messages + [tool], tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - templates without tool support raise anything; the fallback is documented
        return None
    # The call's own rendering before it may differ from what the model wrote (Qwen3 drops an empty think block from
    # earlier turns); only the text from the end of the call to the next assistant turn is taken.
    mark = full.find(MARKER)
    cut = full.rfind(ChatSyntax.CLOSE, 0, mark)
    if mark < 0 or cut < 0:
        return None
    head, _, tail = full[cut + len(ChatSyntax.CLOSE):].partition(MARKER)
    return head, tail


@register_syntax("chat")
class ChatSyntax:
    """``<tool_call>{json}</tool_call>`` (Hermes/Qwen, as TRL parses it); renders the template's tool turn."""

    OPEN, CLOSE = "<tool_call>", "</tool_call>"

    def __init__(self, names: list[str], tokenizer=None):
        self.names = set(names)
        self.tokenizer = tokenizer
        self.turns: dict[str, tuple[str, str] | None] = {}

    def could_end(self, token_text: str) -> bool:
        """Can a token with this text end a call? Only one with the ``>`` of ``</tool_call>``."""
        return ">" in token_text

    def parse(self, text: str) -> tuple[str, str] | None:
        """(tool name, JSON arguments) of the call that ends ``text``; ``None`` if it does not end with a complete
        call. Malformed JSON gives name ``""`` and the raw text, so the model is told its call was unreadable."""
        end = _end(text)
        if not text.endswith(self.CLOSE, 0, end):
            return None
        start = text.rfind(self.OPEN, 0, end - len(self.CLOSE))
        if start < 0:
            return None
        body = text[start + len(self.OPEN):end - len(self.CLOSE)].strip()
        try:
            obj = json.loads(body)
            name = obj["name"]
            args = obj.get("arguments", obj.get("parameters", {}))  # Llama-style templates say "parameters"
            args = json.loads(args) if isinstance(args, str) else args  # OpenAI-style: arguments as a JSON string
            if not isinstance(name, str) or not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            return "", body
        return name, json.dumps(args, ensure_ascii=False)

    def render(self, call: ToolCall) -> str:
        """The template's tool-response turn for ``call`` (or the documented Qwen-style fallback)."""
        if call.name not in self.turns:
            self.turns[call.name] = _template_turn(self.tokenizer, call.name or "tool")
        turn, output = self.turns[call.name], call.output.rstrip("\n")
        if turn is None:
            return f"\n<tool_response>\n{output}\n</tool_response>\n"
        return turn[0] + output + turn[1]
