"""Finding tools by name: the built-ins (``python``, ``calculator``) and plug-ins by import path.

A plug-in follows TRL's convention: a typed Python function with a Google-style docstring, given as
``"package.module:function"``, ``"package.module.function"`` or the name of an entry point in group
``grpo_zero.tools`` (an installed package's ``[project.entry-points."grpo_zero.tools"]``); the model calls it by the
entry point's or the function's name. With the
``chat`` syntax its JSON schema (for the chat template's ``tools=``) is built from the signature and docstring by
``transformers.utils.get_json_schema``, as TRL does, and it is called with the call's JSON arguments as keyword
arguments; with the ``fenced`` syntax it is called with the block's text as its one argument.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from grpo.errors import ConfigError
from grpo.registry import make_registry
from grpo.tools.calculator import calculate

BUILTINS, register_tool, get_builtin = make_registry("tool")
ENTRY_POINT_GROUP = "grpo_zero.tools"


@register_tool("python")
def python(code: str) -> str:
    """Run a Python program in a sandboxed process and return what it prints.

    Args:
        code: The Python program. Its standard output and standard error are returned; use print() to see values.
    """
    raise RuntimeError("the python tool runs in the sandbox: call it through Toolbox.run_many")


@register_tool("calculator")
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly (integers, decimals and fractions).

    Args:
        expression: Numbers with + - * / // % ** and parentheses, e.g. "3*(7+2)/4".
    """
    return calculate(expression)


@dataclass
class Tool:
    """A resolved tool: the name the model writes, the function, and whether it is a built-in."""

    name: str
    fn: Callable
    builtin: bool
    spec: str = ""
    schema: dict | None = field(default=None, repr=False)


def _import_function(spec: str, module_name: str, attr: str) -> Callable:
    """The function ``attr`` of ``module_name``; one clear line when it cannot be had."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ConfigError(f"tool {spec!r}: no module {module_name!r} on the Python path; run from the folder that "
                              f"holds it (now {os.getcwd()}) or add its folder to PYTHONPATH") from None
        raise ConfigError(f"tool {spec!r}: cannot import module {module_name!r} ({e})") from None
    except Exception as e:  # noqa: BLE001 - a plug-in failing on import is one line, not a traceback
        raise ConfigError(f"tool {spec!r}: importing {module_name!r} failed ({type(e).__name__}: {e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        public = [a for a in dir(module) if not a.startswith("_") and callable(getattr(module, a))]
        close = difflib.get_close_matches(attr, public, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"tool {spec!r}: module {module_name!r} has no function {attr!r}{hint}")
    return fn


def resolve(spec: str) -> Tool:
    """The tool ``spec`` names: a built-in, ``"package.module:function"``, an entry point in group
    ``grpo_zero.tools``, or ``"package.module.function"``.

    Raises:
        ConfigError: unknown name or unimportable plug-in; one line naming it and the fix.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"tools: {spec!r} is not a tool name; give a built-in ({', '.join(sorted(BUILTINS))}) or "
                          "'package.module:function'")
    spec = spec.strip()
    if spec in BUILTINS:
        return Tool(spec, BUILTINS[spec], True, spec)
    if ":" not in spec:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == spec:
                try:
                    fn = ep.load()
                except Exception as e:  # noqa: BLE001 - a broken plug-in must not look like an unknown name
                    raise ConfigError(f"tool {spec!r}: entry point {ep.value!r} failed to load "
                                      f"({type(e).__name__}: {e})") from None
                return Tool(spec, fn, False, spec)
    if ":" in spec or "." in spec:
        module_name, _, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
        fn = _import_function(spec, module_name, attr)
        return Tool(getattr(fn, "__name__", attr), fn, False, spec)
    close = difflib.get_close_matches(spec, sorted(BUILTINS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown tool {spec!r}{hint}; built-in tools: {', '.join(sorted(BUILTINS))} (or give a plug-in "
                      "as 'package.module:function' or 'package.module.function')")


def json_schema(tool: Tool) -> dict:
    """The tool's JSON schema (TRL's convention, via ``transformers.utils.get_json_schema``).

    Raises:
        ConfigError: the function lacks type hints or a docstring with its arguments; one line saying so.
    """
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(tool.fn)
    except Exception as e:  # noqa: BLE001 - DocstringParsingException, TypeHintParsingException: one line
        raise ConfigError(f"tool {tool.spec!r}: the chat syntax needs a typed function with a Google-style docstring "
                          f"describing each argument ({e})") from None
