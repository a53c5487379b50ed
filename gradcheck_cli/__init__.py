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
