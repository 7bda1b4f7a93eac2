"""Loading pretrained weights into backbones: reading checkpoint files and adapting first layers.

A representation other than RGB changes the number of input channels of the backbone's first
layer (RGB difference, stacked optical flow, ...).  Pretrained RGB kernels are then adapted by
the usual cross-modality initialisation of TSN (Wang et al. 2016, Section 3.2): average the
kernel over its RGB channels and repeat that mean for every new input channel.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Mapping

import torch
from torch import nn

__all__ = ["inflate_input_kernel", "read_state_dict", "load_backbone_weights", "torchvision_state_dict",
           "timm_state_dict"]

# Containers that training frameworks wrap a model's weights in (PySlowFast and PyTorchVideo
# use "model_state"; many trainers use "state_dict" or "model").
_WRAPPER_KEYS = ("model_state", "state_dict", "model")


def inflate_input_kernel(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a first-layer kernel ``(O, C, *k)`` to ``in_channels`` input channels (TSN).

    The kernel is averaged over its C input channels and the mean is repeated ``in_channels``
    times, as TSN does for RGB-difference and optical-flow networks.  A kernel that already
    has ``in_channels`` channels is returned unchanged (a copy).
    """
    if weight.dim() < 3:
        raise ValueError(f"expected a convolution kernel (O, C, *k), got shape {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be positive, got {in_channels}")
    if weight.shape[1] == in_channels:
        return weight.clone()
    mean = weight.mean(dim=1, keepdim=True)
    return mean.expand(weight.shape[0], in_channels, *weight.shape[2:]).contiguous()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a local checkpoint file with ``torch.load(weights_only=True)``
    (or from a ``.safetensors`` file).

    Unwraps the usual containers (``model_state``, ``state_dict``, ``model``) and strips a
    ``module.`` prefix left by DataParallel/DistributedDataParallel.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    if str(path).endswith(".safetensors"):  # e.g. timm weights from the Hugging Face hub
        from safetensors.torch import load_file

        obj = load_file(str(path))
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "GLOBAL" in str(exc):
                raise ValueError(f"refused to load {path}: it holds Python objects whose loading would run code; "
                                 "dynapp only loads weights files of tensors") from None
            raise ValueError(f"cannot read weights file {path}: not a PyTorch file, or a damaged one") from None
        except Exception:  # damaged or foreign files raise anything
            raise ValueError(f"cannot read weights file {path}: not a PyTorch file, or a damaged one") from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def torchvision_state_dict(weights) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision ``Weights`` entry (e.g. ``ResNet50_Weights.IMAGENET1K_V1``).

    Read from torch's hub cache, ``$TORCH_HOME/hub/checkpoints/<file name of weights.url>``
    (``~/.cache/torch`` without ``TORCH_HOME``), when the file is there: no network is touched.
    Otherwise downloaded into that cache; when the download fails (offline), an ``OSError`` says
    which file to put where.
    """
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if os.path.isfile(path):
        return read_state_dict(path)
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        raise OSError(
            f"cannot download {weights.url} ({str(err).splitlines()[0][:120]}); offline, copy that file to "
            f"{path} (TORCH_HOME sets the cache folder) or give a local weights file as model.pretrained"
        ) from None


def timm_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The state dict of timm's pretrained model ``name`` (e.g. ``vit_base_patch16_224.augreg_in21k``).

    timm takes it from the Hugging Face hub cache (``$HF_HOME/hub``, ``~/.cache/huggingface``
    without ``HF_HOME``) or downloads it there; with ``HF_HUB_OFFLINE=1`` only the cache is read.
    When neither works, an ``OSError`` says how to fill the cache or use a local file.
    """
    import timm

    try:
        return timm.create_model(name, pretrained=True, num_classes=0).state_dict()
    except (OSError, RuntimeError, ValueError) as err:  # the hub's offline errors are OSErrors
        hub_id = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None) or name
        raise OSError(
            f"cannot load timm weights {name!r} ({str(err).splitlines()[0][:120]}); offline, fill the Hugging "
            f"Face cache once where there is a network (`hf download {hub_id}`, then copy $HF_HOME, "
            "default ~/.cache/huggingface, and set HF_HUB_OFFLINE=1) or give a local weights file as "
            "model.pretrained"
        ) from None


def load_backbone_weights(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    first_conv: str,
    ignore: Iterable[str] = (),
) -> None:
    """Load ``state_dict`` into ``module``, adapting the first layer's input channels.

    ``first_conv`` names the first layer's weight key; its kernel is inflated with
    :func:`inflate_input_kernel` when the channel counts differ.  Keys starting with a
    prefix in ``ignore`` (e.g. a classifier) are dropped.  Any other missing or unexpected key,
    or a shape mismatch, raises a ValueError naming the keys.
    """
    ignore = tuple(ignore)
    own = module.state_dict()
    sd = {k: v for k, v in state_dict.items() if not k.startswith(ignore)} if ignore else dict(state_dict)
    if first_conv in sd and first_conv in own and sd[first_conv].shape != own[first_conv].shape:
        sd[first_conv] = inflate_input_kernel(sd[first_conv], own[first_conv].shape[1])
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"pretrained weights do not match {type(module).__name__}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
        )
    bad = [k for k in sd if sd[k].shape != own[k].shape]
    if bad:
        raise ValueError(
            "pretrained weights have the wrong shape for "
            + ", ".join(f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:5])
        )
    module.load_state_dict(sd, strict=True)
