"""Tool calls in rollouts: the tools of a run (built-ins ``python`` and ``calculator``, plug-ins by import path), the
syntax of their calls, and the local sandbox that runs ``python``. See docs/tools.md.

Imported only when a config lists tools; ``build_toolbox`` is the entry point.
"""

from grpo.tools.calls import ToolCall
from grpo.tools.toolbox import Toolbox, build_toolbox

__all__ = ["ToolCall", "Toolbox", "build_toolbox"]
