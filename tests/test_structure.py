"""The layout's rules, checked on the source: no import cycles in grpo/ and rewards/, a short import chain, short
functions, short modules, a thin Trainer, rewards importing nothing from grpo, grpo/core.py free of models and
configs, no module named like a standard-library module, and no private name imported across modules."""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("grpo", "rewards")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_TRAINER_LINES = 300
# The longest chain of imports between the packages' modules (a package importing its own submodules to register
# them does not count). 7 today: tasks.countdown -> tasks.loading -> tasks.golds -> rewards.golds -> rewards.canon ->
# rewards.exact -> rewards.extract -> rewards.normalize.
MAX_IMPORT_CHAIN = 8


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the two packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (at any depth in the file, lazy imports included)."""
    tree = ast.parse(path.read_text())
    found = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def test_no_import_cycles():
    mods = modules()
    graph = {name: imports(name, path, set(mods)) for name, path in mods.items()}
    # A package that imports its submodules (to register them) is fine as long as no submodule imports the
    # package back: that edge pair is a cycle like any other.
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    for name in sorted(graph):
        if state.get(name) is None and visit(name, []):
            break
    assert not cycle, f"import cycle: {' -> '.join(dict.fromkeys(cycle))}"


def test_short_modules_and_functions():
    long_modules, long_functions = [], []
    for name, path in modules().items():
        lines = path.read_text().count("\n")
        if lines > MAX_MODULE_LINES:
            long_modules.append(f"{name} ({lines})")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name} ({n})")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_thin_trainer():
    tree = ast.parse((ROOT / "grpo" / "trainer.py").read_text())
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    assert trainer.end_lineno - trainer.lineno + 1 <= MAX_TRAINER_LINES


def test_layering():
    mods = modules()
    known = set(mods)
    for name, path in mods.items():
        deps = imports(name, path, known)
        if name.startswith("rewards"):
            assert not any(d.startswith("grpo") for d in deps), f"{name} imports from grpo: {deps}"
    for pure in ("grpo.core", "grpo.logprobs", "grpo.correction"):  # the math imports no model, config or accelerator
        deps = imports(pure, mods[pure], known)
        assert deps <= {"grpo.registry"}, f"{pure} must be pure math, imports {deps}"
    for leaf in ("grpo.errors", "grpo.registry", "grpo.batch", "grpo.dist"):  # imported everywhere: import nothing
        deps = imports(leaf, mods[leaf], known)
        assert not deps, f"{leaf} must import nothing from the package, imports {deps}"


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, without a package's edges to its own submodules."""
    mods = modules()
    return {name: {d for d in imports(name, path, set(mods)) if not d.startswith(name + ".")}
            for name, path in mods.items()}


def longest_import_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest path of imports (the graph has no cycles: test_no_import_cycles)."""

    @functools.cache
    def longest(node: str) -> tuple[str, ...]:
        return max(((node, *longest(n)) for n in graph[node]), key=len, default=(node,))

    return list(max((longest(n) for n in graph), key=len))


def test_short_import_chain():
    chain = longest_import_chain(import_graph())
    assert len(chain) - 1 <= MAX_IMPORT_CHAIN, f"import chain of {len(chain) - 1}: {' -> '.join(chain)}"


def test_longest_import_chain_is_measured():
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": set(), "d": {"e"}, "e": set()}
    assert longest_import_chain(graph) == ["a", "b", "d", "e"]


def test_no_module_shadows_the_standard_library():
    shadowing = [name for name in modules() if name.rpartition(".")[2] in sys.stdlib_module_names]
    assert not shadowing, f"modules named like standard-library modules: {shadowing}"


def test_no_private_names_imported_across_modules():
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                found += [f"{name} imports {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, f"private names used across modules: {found}"
