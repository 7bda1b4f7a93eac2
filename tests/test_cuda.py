"""The code paths that differ on a GPU: run when CUDA is present, skipped otherwise.

PWTP's PyTorch path on CUDA against the CPU, AMP (fp16 with a GradScaler, bf16) forward and
backward, channels_last, ``torch.compile`` of a backbone, pinned-memory loader copies with
``non_blocking``, the uint8 clip normalised on the device, NCCL through the project's distributed
helpers, and a two-step ``run_from_config`` with the GPU options of the config (skipped until
those keys exist).
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from dynapp.data import build_dataset
from dynapp.data.encode import write_video
from dynapp.model import build_model
from dynapp.pwtp import PWTP

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

S, T, SIZE, K = 2, 4, 32, 5
SMALL2D = {"widths": [8, 16, 16, 16]}


@pytest.fixture(autouse=True)
def _exact_float32():
    """TF32 matmuls/convolutions would differ from the CPU by ~1e-3: compare in true float32."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _clip(n=2, frames=S * T, size=SIZE, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, frames, size, size), dtype=torch.uint8, generator=g)  # (N, C, S*T, H, W)


def _model(representation="pwtp", backbone="small2d", **kw):
    torch.manual_seed(0)
    return build_model(representation=representation, backbone=backbone, num_classes=K, segments=S, frames=T,
                       backbone_kwargs=kw.pop("backbone_kwargs", SMALL2D if backbone == "small2d" else None), **kw)


def test_pwtp_on_cuda_matches_the_cpu_forward_and_backward():
    torch.manual_seed(0)
    cpu = PWTP(frames=T)
    gpu = PWTP(frames=T).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(3, 3, S * T, 40, 48, dtype=torch.float32)
    outs = {}
    for name, mod, xx in (("cpu", cpu, x.clone().requires_grad_()), ("cuda", gpu, x.cuda().requires_grad_())):
        out = mod(xx, segments=S)
        (out.dynamic.square().mean() + out.enopr.mean()).backward()
        outs[name] = (out.dynamic.detach().cpu(), out.enopr.detach().cpu(), xx.grad.cpu(),
                      [p.grad.cpu() for p in mod.parameters()])
    (d0, e0, g0, p0), (d1, e1, g1, p1) = outs["cpu"], outs["cuda"]
    torch.testing.assert_close(d1, d0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(e1, e0, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g1, g0, rtol=1e-3, atol=1e-6)
    for a, b in zip(p1, p0):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_amp_forward_backward_and_step_of_a_da_model(dtype):
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    model = _model().cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)
    clip, label = _clip().cuda(), torch.tensor([0, 1], device="cuda")
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        with torch.autocast("cuda", dtype=dtype):
            out = model(clip)
            loss = nn.functional.cross_entropy(out.logits.float(), label) + out.aux_loss.float()
        assert torch.isfinite(loss)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    # the autocast forward stays close to float32
    model.eval()
    with torch.no_grad():
        ref = model(clip).logits
        with torch.autocast("cuda", dtype=dtype):
            low = model(clip).logits.float()
    assert (low - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-3


@pytest.mark.parametrize("backbone", ["tsm_resnet50", "x3d_xs"])
def test_channels_last_gives_the_same_output(backbone):
    kw = {"tsm_resnet50": {"arch": "resnet18"},
          "x3d_xs": {"stem_width": 8, "widths": (8, 8, 16, 16), "depths": (2, 1, 1, 1), "head_width": 32}}[backbone]
    model = _model("rgb", backbone, backbone_kwargs=kw).cuda().eval()
    clip = _clip(frames=S * T).cuda()  # the rgb representation takes a frame per segment (2D) or all (3D)
    with torch.no_grad():
        ref = model(clip).logits
        for p in model.parameters():
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)
            elif p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        out = model(clip).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_torch_compile_of_the_backbone_matches_eager():
    model = _model().cuda().eval()
    clip = _clip().cuda()
    with torch.no_grad():
        ref = model(clip).logits
        model.backbone = torch.compile(model.backbone)
        out = model(clip).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    model.train()
    out = model(clip)
    (out.logits.sum() + out.aux_loss).backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_pinned_uint8_batches_copy_non_blocking_and_normalise_on_the_device(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        (tmp_path / f"c{i % 2}").mkdir(exist_ok=True)
        write_video(tmp_path / f"c{i % 2}/v{i}.mp4", rng.integers(0, 256, (12, 32, 48, 3), dtype=np.uint8))
    ds = build_dataset("folder", tmp_path, train=True, segments=S, frames=T, crop_size=SIZE)
    loader = DataLoader(ds, batch_size=2, num_workers=2, pin_memory=True)
    model = _model().cuda().eval()
    for clip, label, _ in loader:
        assert clip.dtype == torch.uint8 and clip.is_pinned()
        gpu = clip.to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        assert torch.equal(gpu.cpu(), clip)
        with torch.no_grad():
            a = model(gpu).logits  # normalised on the device
            b = model(model.normalize(gpu)).logits  # a float clip is taken as normalised
            c = model.cpu()(clip).logits
            model.cuda()
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a.cpu(), c, rtol=1e-4, atol=1e-5)
    assert ds.num_bad == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nccl_process_group_of_one_with_the_distributed_helpers(monkeypatch):
    import torch.distributed as dist

    from dynapp.engine.distributed import cleanup_distributed, init_distributed

    if not dist.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    info = init_distributed("cuda")
    assert info.device.type == "cuda"
    # init_distributed joins a group only for WORLD_SIZE > 1: open a one-process NCCL group here
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=info.device)
    try:
        t = torch.arange(4.0, device=info.device)
        dist.all_reduce(t)
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
        model = nn.parallel.DistributedDataParallel(_model().to(info.device), device_ids=[info.device.index])
        out = model(_clip().to(info.device))
        (out.logits.sum() + out.aux_loss).backward()
    finally:
        cleanup_distributed()
    assert not dist.is_initialized()


def _config_has(keys: list[str]) -> bool:
    from dynapp.config import load_config

    try:
        load_config(None, keys)
    except (ValueError, KeyError, TypeError):
        return False
    return True


GPU_KEYS = ["optim.amp_dtype=bfloat16", "model.channels_last=true", "model.compile=true"]


@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"])
def test_two_training_steps_with_the_gpu_options_of_the_config(tmp_path, amp_dtype):
    from dynapp.config import load_config
    from dynapp.engine.run import run_from_config

    if not _config_has(GPU_KEYS):
        pytest.skip("the config has no optim.amp_dtype, model.channels_last, model.compile yet")
    cfg = load_config(None, [
        "data.dataset=random", "data.segments=2", "data.frames=4", "data.crop_size=32", "data.num_samples=8",
        "data.num_workers=0", "model.backbone=small2d", "model.backbone_kwargs.widths=[8,16,16,16]",
        "optim.batch_size=2", "optim.epochs=1", "max_steps=2", "log.tensorboard=false", "log.progress=false",
        "eval.every_epochs=0", "device=cuda", "optim.amp=true", f"optim.amp_dtype={amp_dtype}",
        "model.channels_last=true", "model.compile=true", f"log.out_dir={tmp_path}",
    ])
    result = run_from_config(cfg)
    assert isinstance(result, dict)
    assert any(Path(tmp_path).iterdir())  # a checkpoint and the logs were written
