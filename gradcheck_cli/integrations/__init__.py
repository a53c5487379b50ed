"""Callbacks for training frameworks, each importing its framework lazily:

    from gradcheck_cli.integrations.lightning import GradcheckCallback      # lightning.pytorch Callback
    from gradcheck_cli.integrations.transformers import GradcheckCallback   # transformers TrainerCallback

Both take watch()'s arguments (every, fail_on, stop_on, output, rules, name) and drive a
gradcheck_cli.watching.Watch.
"""

from __future__ import annotations

from gradcheck_cli.errors import InputError


class MissingFramework(InputError, ImportError):
    """The framework an integration needs is not installed (an ImportError with a one-line message)."""


def require(modules: tuple[str, ...], extra: str, pip_name: str):
    """Import the first of `modules` that is installed, or raise MissingFramework saying how to install it."""
    import importlib

    for module in modules:
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    raise MissingFramework(f"{modules[0]} is not installed: pip install 'gradcheck[{extra}]' (or pip install {pip_name})")


def lazy_callback(module_name: str, build):
    """A module `__getattr__` that builds `GradcheckCallback` (importing the framework) on first access only."""
    cache: dict[str, type] = {}

    def __getattr__(name: str):
        if name == "GradcheckCallback":
            if name not in cache:
                cache[name] = build()
            return cache[name]
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__
