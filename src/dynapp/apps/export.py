"""``dynapp export``: a trained model as ONNX or TorchScript, from the clip to the logits.

The exported graph is :class:`dynapp.apps.inference.Recognizer`'s forward: a uint8 clip (as
decoded, ``--input uint8``, normalised inside the graph) or an already normalised float clip
(``--input float``) of shape ``(N, C, S*T, crop, crop)`` -> logits ``(N, K)``, with a dynamic
batch axis ``N``.  PWTP goes through its PyTorch path (:func:`pytorch_path`): the fused CPU
kernel is a C++ library that neither exporter can see.

ONNX: ``torch.onnx.export(dynamo=True)`` (needs ``onnx`` and ``onnxscript``; the check needs
``onnxruntime``: ``pip install 'dynapp[export]'``).  TorchScript: ``torch.jit.trace``.  After
writing, the file is loaded back (ONNX Runtime, ``torch.jit.load``) and run on a random clip of
another batch size than the traced one; the largest absolute differences of its logits from
PyTorch's are returned (and printed by the command): from the PyTorch path that was exported,
and from PyTorch as dynapp runs by default (the fused kernel, equal to it to float rounding).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from dynapp import pwtp as _pwtp
from dynapp.apps.inference import Recognizer
from dynapp.kernels import autograd as _autograd

__all__ = ["FORMATS", "pytorch_path", "random_clip", "export_model", "run_exported", "export_and_check"]

FORMATS = ("onnx", "torchscript")


class _NoGradContext:
    """What ``Function.forward`` needs of ``ctx`` when nothing is saved for a backward pass."""

    def save_for_backward(self, *tensors) -> None:
        pass

    def mark_non_differentiable(self, *tensors) -> None:
        pass


@contextlib.contextmanager
def _inline_autograd_functions(module) -> Iterator[None]:
    """Call the forward of every ``torch.autograd.Function`` of ``module`` as plain tensor ops.

    The hand-written backward passes of PWTP's PyTorch path are ``autograd.Function``s, which
    ``torch.jit.trace`` records as Python calls it cannot save; their forwards are ordinary
    tensor code, the same arithmetic, so inlining them changes no value.
    """
    functions = [v for v in vars(module).values()
                 if isinstance(v, type) and issubclass(v, torch.autograd.Function) and v is not torch.autograd.Function]
    for fn in functions:
        fn.apply = staticmethod(lambda *args, _fn=fn: _fn.forward(_NoGradContext(), *args))
    try:
        yield
    finally:
        for fn in functions:
            del fn.apply  # back to Function.apply


@contextlib.contextmanager
def pytorch_path(model: nn.Module) -> Iterator[None]:
    """Within this context every PWTP of ``model`` runs its exportable PyTorch path.

    ``PWTP(impl="reference")`` (the fused CPU kernel is a C++ library no exporter can see), with
    the reference path's autograd Functions inlined; the one switch export uses.
    """
    modules = [m for m in model.modules() if isinstance(m, _pwtp.PWTP)]
    previous = [m.impl for m in modules]
    for m in modules:
        m.impl = "reference"
    try:
        with _inline_autograd_functions(_autograd):
            yield
    finally:
        for m, impl in zip(modules, previous):
            m.impl = impl


def random_clip(recognizer: Recognizer, batch: int, dtype: str = "uint8", seed: int = 0) -> torch.Tensor:
    """A random clip ``(batch, C, S*T, crop, crop)``: uint8 in [0, 255] or normalised-range floats."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *recognizer.clip_shape)
    if dtype == "uint8":
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    if dtype == "float":
        return torch.randn(shape, generator=g)
    raise ValueError(f"input must be uint8 or float, got {dtype!r}")


def export_model(recognizer: Recognizer, path: str | os.PathLike, *, fmt: str, example: torch.Tensor,
                 opset: int | None = None) -> Path:
    """Write ``recognizer`` (clip -> logits, dynamic batch) to ``path`` as ONNX or TorchScript."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recognizer = recognizer.eval()
    with torch.no_grad(), pytorch_path(recognizer), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints taken from shapes
        if fmt == "torchscript":
            traced = torch.jit.trace(recognizer, (example,), check_trace=False)
            traced.save(str(path))
            return path
        try:
            import onnx  # noqa: F401  (torch.onnx needs it; a clear message if it is missing)
            import onnxscript  # noqa: F401
        except ImportError:
            raise ValueError("ONNX export needs onnx and onnxscript: pip install 'dynapp[export]'") from None
        # A real forward first: PWTP caches its interpolation matrices (lru_cache), and an entry
        # first made while torch.export traces would be a fake tensor, cached for the process.
        recognizer(example)
        batch = torch.export.Dim("batch", min=1, max=4096)
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
            torch.onnx.export(recognizer, (example,), str(path), dynamo=True, input_names=["clip"],
                              output_names=["logits"], dynamic_shapes=({0: batch},), opset_version=opset,
                              external_data=False, verbose=False)
    return path


def run_exported(path: str | os.PathLike, fmt: str, clip: torch.Tensor) -> torch.Tensor:
    """Run an exported file on ``clip`` (ONNX Runtime on the CPU, or ``torch.jit.load``)."""
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; it still runs
            return torch.jit.load(str(path), map_location="cpu")(clip)
    try:
        import onnxruntime
    except ImportError:
        raise ValueError("checking an ONNX file needs onnxruntime: pip install 'dynapp[export]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"clip": clip.numpy()})[0])


def export_and_check(recognizer: Recognizer, path: str | os.PathLike, *, fmt: str, input_dtype: str = "uint8",
                     batch: int = 2, check: bool = True, opset: int | None = None, seed: int = 0) -> dict:
    """Export, then compare the exported model with PyTorch on a random clip of ``batch + 1`` clips.

    Returns ``{"path", "format", "input", "shape", "max_abs_diff", "max_abs_diff_default"}``:
    the largest difference of the logits from PyTorch on the path that was exported (PWTP's
    reference path), and from PyTorch as ``dynapp`` runs by default (the fused CPU kernel, equal
    to the reference to rounding; the same number for a model without PWTP).  None without ``check``.
    """
    recognizer = recognizer.cpu().eval()
    export_model(recognizer, path, fmt=fmt, example=random_clip(recognizer, batch, input_dtype, seed), opset=opset)
    result = {"path": str(path), "format": fmt, "input": input_dtype, "shape": ["N", *recognizer.clip_shape],
              "max_abs_diff": None, "max_abs_diff_default": None}
    if check:
        clip = random_clip(recognizer, batch + 1, input_dtype, seed + 1)  # another batch size than traced
        with torch.no_grad():
            with pytorch_path(recognizer):
                reference = recognizer(clip)
            default = recognizer(clip)
        got = run_exported(path, fmt, clip).float()
        if got.shape != reference.shape:
            raise ValueError(f"the exported model returns {tuple(got.shape)}, PyTorch {tuple(reference.shape)}")
        result["max_abs_diff"] = float((got - reference.float()).abs().max())
        result["max_abs_diff_default"] = float((got - default.float()).abs().max())
    return result
