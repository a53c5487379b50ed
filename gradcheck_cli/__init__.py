"""gradcheck: a gradient-health checker for PyTorch models.

Importing this package must stay cheap: torch is imported only by the modules that run passes.
"""

__version__ = "0.1.0"


def check(*args, **kwargs):
    """Check a model's gradients and return the report (see gradcheck_cli.api.check)."""
    from gradcheck_cli.api import check as _check

    return _check(*args, **kwargs)


def assert_healthy_gradients(*args, **kwargs):
    """Raise AssertionError with the rendered findings when a model's gradients are unhealthy."""
    from gradcheck_cli.api import assert_healthy_gradients as _assert

    return _assert(*args, **kwargs)


def watch(model, **kwargs):
    """Watch a model's gradients in your own training loop: `monitor.step(loss)` after each backward,
    `monitor.close()` at the end (see gradcheck_cli.watching.watch)."""
    from gradcheck_cli.watching import watch as _watch

    return _watch(model, **kwargs)


def __getattr__(name):
    if name in ("GradcheckStop", "Watch"):
        from gradcheck_cli import watching

        return getattr(watching, name)
    raise AttributeError(f"module 'gradcheck_cli' has no attribute {name!r}")
