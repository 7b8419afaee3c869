"""Reading a run's config: the YAML recipe (``--config``, else ``configs/default.yaml``), ``--key value`` overrides
and ``--help``. ``load_config(argv)`` parses and checks values and has no side effects: it reads the YAML file and
nothing else. Every problem raises :class:`ConfigError` whose message is one line naming the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from grpo.config import GRPOConfig, validate
from grpo.errors import ConfigError
from grpo.paths import DEFAULT_CONFIG, PROJECT_ROOT


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); ``int`` -> (int, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


_HINTS = typing.get_type_hints(GRPOConfig)
_TYPES = {name: _strip_optional(tp) for name, tp in _HINTS.items()}


def _coerce(key: str, value: Any, from_cli: bool) -> Any:
    """Convert ``value`` to the field's type; raise ConfigError with the expected type if it cannot be."""
    tp, optional = _TYPES[key]
    # "none" on the command line means null only for optional fields: `--scale_rewards none` is a real value.
    if value is None or (optional and from_cli and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"config key '{key}' cannot be empty; give a {tp.__name__}")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            if isinstance(value, str) and not from_cli:
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool) or (isinstance(value, str) and not from_cli):
                # YAML 1.1 reads "1e-4" (no dot) as a string: accept it, it is what users write.
                if isinstance(value, str):
                    return float(value)
                raise ValueError
            return float(value)
        if tp is dict:
            if isinstance(value, str) and from_cli:
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError
            return value
        if tp is list:
            if isinstance(value, str) and from_cli:
                value = yaml.safe_load(value)  # "[a, b]" on the command line
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]  # "a" or "a,b"
            if not isinstance(value, list):
                raise ValueError
            return value
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (ValueError, TypeError, yaml.YAMLError):
        pass
    else:
        return value
    raise ConfigError(f"config key '{key}' must be {'an' if tp is int else 'a'} {tp.__name__}, got {value!r}")


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(_TYPES), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; see `python train.py --help` for the keys"
    return ConfigError(f"unknown config key '{key}'{hint}")


def parse_cli(argv: list[str]) -> tuple[str | None, dict[str, str]]:
    """Split ``--config PATH`` and ``--key value`` / ``--key=value`` pairs. Returns (config path, overrides)."""
    config_path, overrides, i = None, {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}; options look like --key value")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq and key == "smoke" and (i + 1 >= len(argv) or argv[i + 1].startswith("--")):
            value = "true"  # --smoke is a switch: bare means on
        elif not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"option --{key} needs a value, e.g. --{key} VALUE")
            value = argv[i + 1]
            i += 1
        i += 1
        if key == "config":
            config_path = value
        else:
            overrides[key] = value
    return config_path, overrides


def load_config(argv: list[str] | None = None) -> GRPOConfig:
    """Build and validate the config: defaults < YAML file (``--config``, else configs/default.yaml) < CLI.

    Raises:
        ConfigError: unknown or mistyped key, missing file, inconsistent batch shape... one line each.
    """
    config_path, overrides = parse_cli(list(argv or []))
    path = Path(config_path) if config_path else DEFAULT_CONFIG
    if not path.is_file():
        close = _close_config(path)
        hint = f" (did you mean {close}?)" if close else ""
        raise ConfigError(f"config file not found: {path}{hint}; pass an existing YAML file with --config (see configs/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a mapping of key: value")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _TYPES:
            raise _unknown_key(key)
        values[key] = _coerce(key, value, from_cli=False)
    for key, value in overrides.items():
        if key not in _TYPES:
            raise _unknown_key(key)
        values[key] = _coerce(key, value, from_cli=True)
    cfg = GRPOConfig(**values)
    validate(cfg)
    return cfg


def _close_config(path: Path) -> str | None:
    """The YAML file closest in name to a missing ``--config`` path: one beside it, or one of the project's configs/
    (shown relative to the working folder when it is inside it)."""
    options: dict[str, Path] = {}
    if path.parent.is_dir():
        options.update({f.name: path.parent / f.name for f in path.parent.glob("*.y*ml")})
    for f in DEFAULT_CONFIG.parent.glob("*.y*ml"):
        options.setdefault(f.name, f)
    close = difflib.get_close_matches(path.name, sorted(options), n=1, cutoff=0.6)
    if not close:
        return None
    found = options[close[0]]
    relative = os.path.relpath(found) if found.is_absolute() else str(found)
    return str(found) if relative.startswith("..") else relative


def help_text() -> str:
    """``--help``: every key with the value a bare run uses (``configs/default.yaml`` over the built-in default),
    the built-in default where the two differ, and its documentation. Both values are read from where the run
    reads them, so the help cannot drift from the recipe."""
    try:
        recipe = yaml.safe_load(DEFAULT_CONFIG.read_text()) or {}
    except (OSError, yaml.YAMLError):
        recipe = {}
    lines = ["usage: train.py [--config FILE.yaml] [--key value ...]", "",
             (f"A bare run uses the recipe {DEFAULT_CONFIG.relative_to(PROJECT_ROOT)} (the tiny base on CPU). "
              "--config FILE replaces that recipe:"),
             "FILE is layered on the built-in defaults, not on default.yaml; --key value flags override either.",
             "", "keys (value in a bare run; [built-in default under --config, where it differs]):"]
    for f in dataclasses.fields(GRPOConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = f"{recipe[f.name]!r} [{default!r}]" if f.name in recipe and recipe[f.name] != default else repr(default)
        lines.append(f"  --{f.name} ({shown})\n      {f.metadata['help']}")
    return "\n".join(lines)
