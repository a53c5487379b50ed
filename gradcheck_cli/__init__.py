"""gradcheck: a gradient-health checker for PyTorch models.

Importing this package must stay cheap: torch is imported only by the modules that run passes.
"""

__version__ = "0.1.0"
