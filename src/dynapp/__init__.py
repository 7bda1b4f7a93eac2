"""dynapp: Dynamic Appearance (Huang and Bors, AAAI 2023) for video action recognition.

``from dynapp import PWTP`` is the module; ``dynapp.load(checkpoint)`` a trained model ready
for use (:mod:`dynapp.apps.inference`); the subpackages hold the rest.  Attributes are
imported lazily so that ``dynapp --help`` does not pay for importing torch.
"""

from __future__ import annotations

__all__ = ["PWTP", "PWTPOutput", "load"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("PWTP", "PWTPOutput"):
        from dynapp import pwtp

        return getattr(pwtp, name)
    if name == "load":
        from dynapp.apps.inference import load

        return load
    raise AttributeError(f"module 'dynapp' has no attribute {name!r}")
