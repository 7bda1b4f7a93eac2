"""dynapp: Dynamic Appearance (Huang and Bors, AAAI 2023) for video action recognition.

``from dynapp import PWTP`` is the module; the subpackages hold the rest.  Attributes are
imported lazily so that ``dynapp --help`` does not pay for importing torch.
"""

from __future__ import annotations

__all__ = ["PWTP", "PWTPOutput"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        from dynapp import pwtp

        return getattr(pwtp, name)
    raise AttributeError(f"module 'dynapp' has no attribute {name!r}")
