"""Unit tests for rewards.registry: how a reward name resolves, and the per-call sinks rewards report into."""

from __future__ import annotations

import sys
import textwrap

import pytest

from rewards import registry


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """An importable module ``my_verifiers`` with a plain function and one registered under another name."""
    (tmp_path / "my_verifiers.py").write_text(textwrap.dedent("""
        from rewards import register

        def plain(completions, **columns):
            return [0.5] * len(completions)

        @register("shouty")
        def _loud(completions, **columns):
            return [1.0 if c.isupper() else 0.0 for c in completions]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_verifiers"
    sys.modules.pop("my_verifiers", None)
    registry._REGISTRY.pop("shouty", None)


def test_registered_names_resolve_and_are_listed():
    fn = registry.get("accuracy")
    assert fn(completions=["<answer>4</answer>"], answer=["4"]) == [1.0]
    assert "accuracy" in registry.available() and "format" in registry.available()


def test_module_paths_resolve_functions_and_registered_names(plugin_module):
    assert registry.get(f"{plugin_module}:plain")(completions=["a", "b"]) == [0.5, 0.5]
    assert registry.get(f"{plugin_module}.plain")(completions=["a"]) == [0.5]  # TRL's dotted form
    shouty = registry.get(f"{plugin_module}:shouty")  # the module registers "shouty" when imported
    assert shouty(completions=["HI", "hi"]) == [1.0, 0.0] and registry.get("shouty") is shouty


@pytest.mark.parametrize("name, fragment", [
    ("acuracy", "unknown reward 'acuracy' (did you mean 'accuracy'?); known rewards: "),
    ("no_such_module_xyz:f", "no module 'no_such_module_xyz' on the Python path"),
    ("no_such_module_xyz.f", "no module 'no_such_module_xyz' on the Python path"),
    ("rewards.registry:nothing_here", "has no function 'nothing_here' and registers no reward"),
])
def test_unknown_names_fail_with_one_line(name, fragment):
    with pytest.raises(KeyError) as e:
        registry.get(name)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_import_path_only_for_functions_a_worker_can_import(plugin_module):
    assert registry.import_path(registry.get(f"{plugin_module}:plain")) == f"{plugin_module}:plain"

    def local(completions, **columns):
        return [0.0] * len(completions)

    assert registry.import_path(local) is None  # defined inside a function: a worker process cannot import it


def test_report_and_annotate_reach_only_the_enclosing_collect():
    registry.report("ignored", 1.0)  # outside collect: a no-op, never an error
    registry.annotate([{"x": 1}])
    with registry.collect() as outer:
        registry.report("hits", 1.0)
        registry.report("hits", 2.0)
        with registry.collect() as inner:
            registry.report("hits", 5.0)
            registry.annotate([{"why": "a"}, {"why": "b"}])
        registry.report("misses", 1.0)
    assert outer.counters == {"hits": 3.0, "misses": 1.0} and outer.notes is None
    assert inner.counters == {"hits": 5.0} and inner.notes == [{"why": "a"}, {"why": "b"}]
    with registry.collect_metrics() as counters:
        registry.report("n", 4)
    assert counters == {"n": 4.0}
