"""dynapp: Dynamic Appearance (Huang and Bors) for video action recognition."""

from dynapp.pwtp import PWTP, PWTPOutput

__all__ = ["PWTP", "PWTPOutput"]
__version__ = "0.1.0"
