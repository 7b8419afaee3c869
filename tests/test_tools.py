"""The tools package without the sandbox: the exact calculator, the fenced and chat call syntaxes, the tool
registry (built-ins, plug-ins by import path, bad names) and the toolbox's in-process calls."""

from __future__ import annotations

import json
import sys
import textwrap
from fractions import Fraction

import pytest

from grpo.errors import ConfigError
from grpo.tools import ToolCall, build_toolbox
from grpo.tools.calculator import CalculatorError, calculate, format_number
from grpo.tools.registry import resolve

# --- calculator -------------------------------------------------------------------------------------------------

EXACT = {
    "integers": ("3*7+2", "23"),
    "decimals are exact": ("0.1 + 0.2", "0.3"),
    "fraction stays a fraction": ("1/3", "1/3"),
    "fractions add exactly": ("1/3 + 1/6", "0.5"),
    "unary minus binds looser than power": ("-3**2", "-9"),
    "parentheses": ("(-3)**2", "9"),
    "negative exponent": ("2**-2", "0.25"),
    "caret is power": ("2^10", "1024"),
    "exact root": ("(8/27)**(1/3)", "2/3"),
    "odd root of a negative": ("(-8)**(1/3)", "-2"),
    "floor division and modulo": ("17//5 + 17%5", "5"),
    "long decimal kept exactly": ("0.1000000000000000000001*10", "1.000000000000000000001"),
    "scientific notation": ("1e3/8", "125"),
    "big but bounded": ("2**1000 - 2**1000 + 7", "7"),
    "multiplication sign": ("6×7", "42"),
}


@pytest.mark.parametrize("expr,expected", EXACT.values(), ids=EXACT.keys())
def test_calculator_is_exact(expr, expected):
    assert calculate(expr) == expected


ERRORS = {
    "division by zero": ("1/0", "division by zero"),
    "power tower": ("9**9**9", "exponent too large"),
    "huge result": ("2**9999 * 2**9999", "too large"),
    "irrational": ("2**0.5", "irrational"),
    "even root of negative": ("(-4)**0.5", "negative"),
    "no import": ("__import__('os')", "unsupported"),
    "no names": ("x + 1", "unsupported"),
    "no attributes": ("(1).__class__", "unsupported"),
    "no strings": ("'a' * 3", "not a number"),
    "no lambdas": ("(lambda: 1)()", "unsupported"),
    "syntax": ("3 +* 4", "cannot parse"),
    "empty": ("  ", "empty"),
    "too long": ("1+" * 400 + "1", "too long"),
}


@pytest.mark.parametrize("expr,fragment", ERRORS.values(), ids=ERRORS.keys())
def test_calculator_errors_are_one_line(expr, fragment):
    with pytest.raises(CalculatorError) as err:
        calculate(expr)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_calculator_never_evaluates_code(monkeypatch):
    import builtins

    monkeypatch.setattr(builtins, "eval", lambda *a, **k: pytest.fail("eval called"))
    with pytest.raises(CalculatorError):
        calculate("__import__('os').system('echo hacked')")
    assert calculate("1+1") == "2"


def test_format_number_matches_fraction():
    for x in [Fraction(7, 3), Fraction(-1, 8), Fraction(5), Fraction(-3, 40), Fraction(1, 1024)]:
        text = format_number(x)
        assert Fraction(text) == x


# --- syntax -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fenced():
    return build_toolbox(["calculator"], syntax="fenced")


@pytest.fixture(scope="module")
def chat():
    return build_toolbox(["calculator"], syntax="chat")


def test_fenced_complete_call(fenced):
    text = "So we need 3*7+2.\n```calculator\n3*7+2\n```"
    assert fenced.call_end(text) and fenced.parse(text) == ("calculator", "3*7+2")
    assert fenced.parse(text + "\n") == ("calculator", "3*7+2")  # a token may carry the newline after the fence


@pytest.mark.parametrize("text", ["```calculator\n3*7", "```calculator\n3*7\n``", "```calculator\n3*7\n```\nand",
                                  "```calculator 3*7```", "no call at all", "```"])
def test_fenced_partial_or_no_call(fenced, text):
    assert not fenced.call_end(text) and fenced.parse(text) is None


def test_fenced_unknown_tool_and_other_blocks_are_not_calls(fenced):
    assert fenced.parse("```python\nprint(1)\n```") is None  # python is not in this toolbox
    assert fenced.parse("```text\nhello\n```") is None
    assert fenced.parse("```calculator\n1+1\n```\n```output\n2\n```") is None  # ends with the output block


def test_fenced_multiple_blocks_and_calls_after_output(fenced):
    text = "```calculator\n1+1\n```\n```output\n2\n```\nNow the next.\n```calculator\n2*21\n```"
    assert fenced.parse(text) == ("calculator", "2*21")
    two = "```calculator\n1\n```\n```calculator\n2\n```"
    assert fenced.parse(two) == ("calculator", "2")


def test_fenced_could_end_prefilter(fenced):
    assert fenced.could_end("```") and fenced.could_end("`\n") and not fenced.could_end("print")


def test_fenced_unreadable_call_gets_the_fenced_hint(fenced):
    [call] = fenced.run_many([("", "```calculator 1+1```")])
    assert call.error.startswith("malformed tool call: write a block that opens with ```<tool>")


def test_fenced_render(fenced):
    assert fenced.render(ToolCall("calculator", "3*7+2", "23")) == "\n```output\n23\n```\n"
    assert fenced.render(ToolCall("python", "x", "a\nb\n")) == "\n```output\na\nb\n```\n"


def test_chat_complete_call(chat):
    text = 'Sure.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "3*7+2"}}\n</tool_call>'
    assert chat.call_end(text)
    name, args = chat.parse(text)
    assert name == "calculator" and json.loads(args) == {"expression": "3*7+2"}


@pytest.mark.parametrize("text", ['<tool_call>\n{"name": "calculator", "arguments": {}}', "<tool_call>",
                                  '<tool_call>{"name": "calculator"}</tool_call> more', "</tool_call>"])
def test_chat_partial_or_no_call(chat, text):
    assert not chat.call_end(text) and chat.parse(text) is None


def test_chat_variants_and_malformed(chat):
    as_string = '<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"1\\"}"}</tool_call>'
    assert json.loads(chat.parse(as_string)[1]) == {"expression": "1"}
    llama = '<tool_call>{"name": "calculator", "parameters": {"expression": "2"}}</tool_call>'
    assert json.loads(chat.parse(llama)[1]) == {"expression": "2"}
    assert chat.parse("<tool_call>{not json}</tool_call>") == ("", "{not json}")
    [call] = chat.run_many([("", "{not json}")])
    assert call.error.startswith("malformed tool call")


def test_chat_multiple_calls_parse_the_last(chat):
    text = ('<tool_call>{"name": "calculator", "arguments": {"expression": "1"}}</tool_call>\n<tool_response>\n1\n'
            '</tool_response>\n<tool_call>{"name": "calculator", "arguments": {"expression": "2"}}</tool_call>')
    assert json.loads(chat.parse(text)[1]) == {"expression": "2"}


def test_chat_render_fallback_without_template(chat):
    assert chat.render(ToolCall("calculator", "{}", "23\n")) == "\n<tool_response>\n23\n</tool_response>\n"


def test_chat_render_uses_the_template_tool_turn():
    trl_templates = pytest.importorskip("trl.chat_template_utils")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained("models/tiny-base")
    tok.chat_template = trl_templates.qwen2_5_chat_template
    box = build_toolbox(["calculator"], syntax="chat", tokenizer=tok)
    turn = box.render(ToolCall("calculator", "{}", "23"))
    expected = "<|im_end|>\n<|im_start|>user\n<tool_response>\n23\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    assert turn == expected
    call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "3*7+2"}}}
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "calculator", "content": "23"}]
    whole = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert whole.endswith("</tool_call>" + turn)  # the same text the template gives the whole transcript


def test_syntax_check_is_cheap(fenced):
    import time

    long_text = "word " * 20_000 + "```calculator\n1+1\n```"
    start = time.perf_counter()
    for _ in range(1000):
        fenced.call_end(long_text)
    assert (time.perf_counter() - start) / 1000 < 1e-3  # it looks at the end, not the whole text


# --- registry ---------------------------------------------------------------------------------------------------

PLUGIN = '''
def word_count(text: str) -> int:
    """Count the words of a text.

    Args:
        text: The text to count.
    """
    return len(text.split())


def shout(text):
    return text.upper()


def broken(text: str) -> str:
    """Always fails.

    Args:
        text: Ignored.
    """
    raise RuntimeError("boom")
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_tools_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_tools_plugin"
    sys.modules.pop("my_tools_plugin", None)


def test_registry_builtins():
    assert resolve("python").builtin and resolve("calculator").fn("2*3") == "6"


@pytest.mark.parametrize("form", ["my_tools_plugin:word_count", "my_tools_plugin.word_count"])
def test_registry_plugin_forms(plugin, form):
    tool = resolve(form)
    assert tool.name == "word_count" and not tool.builtin and tool.fn("a b c") == 3


def test_plugin_calls_fenced_and_chat(plugin):
    fenced = build_toolbox(["my_tools_plugin:word_count", "my_tools_plugin:broken"])
    assert fenced.run_many([("word_count", "one two")])[0].output == "2"
    failed = fenced.run_many([("broken", "x")])[0]
    assert failed.error == "RuntimeError: boom" and failed.output == failed.error
    chat = build_toolbox(["my_tools_plugin.word_count"], syntax="chat")
    assert chat.schemas[0]["function"]["parameters"]["properties"]["text"]["type"] == "string"
    assert chat.run_many([("word_count", json.dumps({"text": "a b c d"}))])[0].output == "4"


def test_registry_entry_point(plugin, monkeypatch):
    from importlib.metadata import EntryPoint

    from grpo.tools import registry

    eps = [EntryPoint("count_words", "my_tools_plugin:word_count", registry.ENTRY_POINT_GROUP),
           EntryPoint("broken_ep", "no_such_module_xyz:f", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "entry_points", lambda group: [e for e in eps if e.group == group])
    tool = resolve("count_words")
    assert tool.name == "count_words" and tool.fn("a b") == 2
    with pytest.raises(ConfigError, match="entry point 'no_such_module_xyz:f' failed to load"):
        resolve("broken_ep")


BAD = {
    "unknown name": ("calculater", "unknown tool 'calculater' (did you mean 'calculator'?)"),
    "missing module": ("no_such_module_xyz:f", "no module 'no_such_module_xyz' on the Python path"),
    "missing function": ("my_tools_plugin:word_cont", "has no function 'word_cont' (did you mean 'word_count'?)"),
    "empty": ("", "is not a tool name"),
}


@pytest.mark.parametrize("spec,fragment", BAD.values(), ids=BAD.keys())
def test_bad_tool_names_are_one_line(plugin, spec, fragment):
    with pytest.raises(ConfigError) as err:
        build_toolbox([spec])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_bad_settings_are_one_line(plugin):
    cases = [({"syntax": "xml"}, "unknown tool_syntax 'xml'"), ({"max_tool_calls": 0}, "max_tool_calls"),
             ({"timeout_s": 0}, "tool_timeout_s"), ({"workers": 0}, "tool_workers")]
    for kwargs, fragment in cases:
        with pytest.raises(ValueError, match=fragment):
            build_toolbox(["calculator"], **kwargs)
    with pytest.raises(ConfigError, match="needs a typed function with a Google-style docstring"):
        build_toolbox(["my_tools_plugin:shout"], syntax="chat")  # no type hints, no docstring
    with pytest.raises(ConfigError, match="two tools are named 'calculator'"):
        build_toolbox(["calculator", "calculator"])
    with pytest.raises(ConfigError, match="list is empty"):
        build_toolbox([])


# --- toolbox ----------------------------------------------------------------------------------------------------

def test_run_many_keeps_order_and_never_raises(fenced):
    calls = fenced.run_many([("calculator", "2+2"), ("calculator", "1/0"), ("nope", "x"), ("calculator", "6*7")])
    assert [c.output for c in calls] == ["4", "CalculatorError: division by zero",
                                         "unknown tool 'nope'; available: calculator", "42"]
    assert [c.error is None for c in calls] == [True, False, False, True]
    assert calls[0].as_record() == {"name": "calculator", "arguments": "2+2", "output": "4", "error": None,
                                    "seconds": calls[0].seconds, "timed_out": False}


def test_tool_output_is_capped(plugin):
    box = build_toolbox(["my_tools_plugin:word_count", "calculator"], max_output_chars=5)
    assert box.run_many([("calculator", "10**20")])[0].output == "10000\n[output truncated: 21 characters]"


def test_python_tool_through_the_toolbox():
    box = build_toolbox(["python", "calculator"], syntax="chat", workers=1, timeout_s=3)
    try:
        calls = box.run_many([("python", json.dumps({"code": "print(6*7)"})), ("calculator", '{"expression": "1+1"}'),
                              ("python", '{"program": "print(1)"}')])
    finally:
        box.close()
    assert [c.output for c in calls[:2]] == ["42\n", "2"] and calls[2].error.startswith("python: the arguments")
    assert calls[0].arguments == '{"code": "print(6*7)"}'
    after = box.run_many([("calculator", '{"expression": "1+2"}'), ("python", '{"code": "print(1)"}')])
    assert after[0].output == "3" and after[1].error == "the sandbox is closed"  # closed: still never raises


def test_tools_off_imports_nothing():
    import subprocess

    code = "import grpo.config, grpo.trainer, sys; print(any(m.startswith('grpo.tools') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=".", timeout=300,
                         check=False)
    assert out.stdout.strip() == "False", out.stderr[-500:]
