"""Pretrained weights by name without a network: torch's hub cache (TSM's "imagenet") and the
Hugging Face cache with HF_HUB_OFFLINE=1 (ViT's timm tags), as docs/weights.md describes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision

from dynapp.backbones import build_backbone


def _no_download(*args, **kwargs):
    raise OSError("network is unreachable")


def test_tsm_imagenet_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    reference = torchvision.models.resnet18()
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(weights.url)
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    net = build_backbone("tsm_resnet50", arch="resnet18", num_segments=2, in_channels=3, pretrained="imagenet")
    assert torch.equal(net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(net.conv1.weight, reference.conv1.weight)


def test_tsm_imagenet_weights_offline_without_the_cache_say_where_the_file_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    with pytest.raises(OSError) as err:
        build_backbone("tsm_resnet50", arch="resnet18", num_segments=2, pretrained="imagenet")
    text = str(err.value)
    assert "\n" not in text and "resnet18-" in text
    assert str(tmp_path / "hub" / "checkpoints") in text and "model.pretrained" in text


_HF_CHILD = textwrap.dedent(
    """
    import sys, torch
    from dynapp.backbones import build_backbone
    kw = dict(embed_dim=192, depth=12, num_heads=3)
    net = build_backbone("vit_b16", num_segments=2, pretrained="vit_tiny_patch16_224.augreg_in21k", **kw)
    ref = torch.load(sys.argv[1])
    assert torch.equal(net.vit.blocks[11].mlp.fc2.weight, ref["blocks.11.mlp.fc2.weight"])
    print("loaded")
    """
)


def _hf_env(home) -> dict:
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    return env


def test_vit_timm_weights_load_from_the_hugging_face_cache_offline(tmp_path):
    import timm
    from safetensors.torch import save_file

    image = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    sd = {k: v.contiguous() for k, v in image.state_dict().items()}
    repo = tmp_path / "hf" / "hub" / "models--timm--vit_tiny_patch16_224.augreg_in21k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(sd, str(repo / "snapshots" / commit / "model.safetensors"))
    torch.save(sd, tmp_path / "ref.pt")
    run = subprocess.run([sys.executable, "-c", _HF_CHILD, str(tmp_path / "ref.pt")], env=_hf_env(tmp_path / "hf"),
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0 and "loaded" in run.stdout, run.stderr[-2000:]


def test_vit_timm_weights_offline_without_the_cache_is_one_clear_error(tmp_path):
    code = textwrap.dedent(
        """
        from dynapp.backbones import build_backbone
        try:
            build_backbone("vit_b16", num_segments=2, pretrained="timm", embed_dim=192, depth=12, num_heads=3)
        except OSError as err:
            print("ERROR:", err)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], env=_hf_env(tmp_path / "hf"), capture_output=True, text=True,
                         timeout=240)
    line = [ln for ln in run.stdout.splitlines() if ln.startswith("ERROR:")]
    assert line, run.stdout + run.stderr[-2000:]
    assert "HF_HUB_OFFLINE=1" in line[0] and "model.pretrained" in line[0]
    assert "timm/vit_base_patch16_224.augreg_in21k" in line[0]
