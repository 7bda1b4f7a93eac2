"""VideoClassifier and build_model: every representation x backbone pair, consensus, checkpoints."""

from __future__ import annotations

import pytest
import torch

from dynapp.backbones import BACKBONES, BACKBONES_3D
from dynapp.model import ModelOutput, VideoClassifier, build_model
from dynapp.representations import REPRESENTATIONS

# Small variants of the big backbones (same code paths) so that all pairs run in seconds on a CPU.
_TINY_X3D = dict(stem_width=8, widths=(8, 8, 16, 16), depths=(2, 1, 1, 1), head_width=32)
TINY = {
    "tsm_resnet50": dict(arch="resnet18"),
    "vit_b16": dict(embed_dim=32, depth=2, num_heads=2, img_size=32),
    "x3d_xs": _TINY_X3D,
    "x3d_m": _TINY_X3D,
}
# Few TV-L1 iterations: the test checks the plumbing, not the flow.
REP_KWARGS = {"flow_tvl1": dict(nscales=1, warps=1, innnerIterations=5, outerIterations=2)}
S, T, SIZE, K = 2, 3, 32, 5


def _clip(n=2, seed=0):
    return torch.randn(n, 3, S * T, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_representation_backbone_pair_runs_forward_and_backward(backbone):
    for rep in sorted(REPRESENTATIONS):
        torch.manual_seed(0)
        model = build_model(
            representation=rep,
            backbone=backbone,
            num_classes=K,
            segments=S,
            frames=T,
            representation_kwargs=REP_KWARGS.get(rep),
            backbone_kwargs=TINY.get(backbone),
        )
        out = model(_clip())
        assert isinstance(out, ModelOutput)
        assert out.logits.shape == (2, K) and torch.isfinite(out.logits).all(), (rep, backbone)
        loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1]))
        if out.aux_loss is not None:
            assert out.aux_loss.dim() == 0 and torch.isfinite(out.aux_loss)
            loss = loss + out.aux_loss
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), (rep, backbone)
        assert model.head.weight.grad.abs().sum() > 0
        if rep == "pwtp":  # Theta1 is trained through the recognition loss and ENoPR
            assert any(p.grad.abs().sum() > 0 for p in model.representation.parameters())


def test_three_d_backbones_receive_all_frames_and_channels_follow_the_representation():
    m = build_model(representation="rgb", backbone="small3d", num_classes=K, segments=S, frames=T)
    assert m.backbone.num_segments == S * T and "small3d" in BACKBONES_3D
    m = build_model(representation="rgb", backbone="small2d", num_classes=K, segments=S, frames=T)
    assert m.backbone.num_segments == S
    m = build_model(representation="rgb_diff", backbone="small2d", num_classes=K, segments=S, frames=T)
    assert m.backbone.in_channels == 3 * (T - 1)
    m = build_model(representation="pwtp", backbone="x3d_xs", num_classes=K, segments=4, frames=8)
    assert m.backbone.num_frames == 4 and m.backbone.in_channels == 3


def test_consensus_averages_segment_logits():
    torch.manual_seed(0)
    model = build_model(representation="rgb", backbone="small2d", num_classes=K, segments=S, frames=T).eval()
    clip = _clip()
    with torch.no_grad():
        out = model(clip)
        feats = model.backbone(model.representation(clip).frames)  # (N, S, F)
        per_segment = model.head(feats)
    assert feats.shape == (2, S, model.backbone.num_features)
    assert torch.allclose(out.logits, per_segment.mean(dim=1), atol=1e-6)
    assert not torch.allclose(per_segment[:, 0], per_segment[:, 1])  # a real average, not a copy


def test_theta1_is_the_representation():
    model = build_model(representation="pwtp", backbone="small2d", num_classes=K, segments=S, frames=T)
    theta1 = {id(p) for p in model.representation.parameters()}
    assert theta1 == {id(p) for p in model.representation.pwtp.parameters()} and theta1
    theta2 = {id(p) for p in model.backbone.parameters()} | {id(p) for p in model.head.parameters()}
    assert theta1.isdisjoint(theta2)
    assert theta1 | theta2 == {id(p) for p in model.parameters()}


def test_checkpoint_file_reproduces_outputs_exactly(tmp_path):
    torch.manual_seed(0)
    kwargs = dict(representation="pwtp", backbone="tsm_resnet50", num_classes=K, segments=S, frames=T, backbone_kwargs=TINY["tsm_resnet50"])
    model = build_model(**kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(_clip())  # one training step so that weights and BN statistics differ from init
    (out.logits.sum() + out.aux_loss).backward()
    opt.step()
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    torch.manual_seed(1)
    other = build_model(**kwargs)
    other.load_state_dict(torch.load(path, weights_only=True))
    model.eval(), other.eval()
    clip = _clip(seed=3)
    with torch.no_grad():
        a, b = model(clip), other(clip)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.aux_loss, b.aux_loss)
    with torch.no_grad():
        fresh = build_model(**kwargs).eval()(clip)
    assert not torch.allclose(fresh.logits, a.logits)


def test_pretrained_backbone_file_is_inflated_for_rgb_difference(tmp_path):
    torch.manual_seed(0)
    source = build_model(representation="rgb", backbone="small2d", num_classes=K, segments=S, frames=T)
    path = tmp_path / "small2d.pth"
    torch.save(source.backbone.state_dict(), path)
    model = build_model(representation="rgb_diff", backbone="small2d", num_classes=K, segments=S, frames=T, pretrained=str(path))
    w = source.backbone.features[0][0].weight
    assert torch.equal(model.backbone.features[0][0].weight, w.mean(dim=1, keepdim=True).expand(-1, 3 * (T - 1), -1, -1))
    assert torch.equal(model.backbone.features[2][0].weight, source.backbone.features[2][0].weight)


def test_bad_names_and_shapes_give_clear_errors():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model(representation="rgb", backbone="nope", num_classes=K, segments=S, frames=T)
    with pytest.raises(ValueError, match="unknown representation"):
        build_model(representation="nope", backbone="small2d", num_classes=K, segments=S, frames=T)
    with pytest.raises(ValueError, match="num_classes"):
        build_model(representation="rgb", backbone="small2d", num_classes=0, segments=S, frames=T)
    model = build_model(representation="rgb", backbone="small2d", num_classes=K, segments=S, frames=T)
    with pytest.raises(ValueError):
        model(torch.randn(1, 3, S * T + 1, SIZE, SIZE))  # wrong frame count
    with pytest.raises(ValueError):
        model(torch.randn(1, 4, S * T, SIZE, SIZE))  # wrong channel count
    with pytest.raises(ValueError, match=r"\(N, 3, 2, H, W\)"):  # a representation's output that does not fit
        VideoClassifier(REPRESENTATIONS["rgb"](segments=3, frames=1), model.backbone, K)(torch.randn(1, 3, 3, SIZE, SIZE))


def test_normalize_at_the_entrance_is_float_passthrough_and_not_in_the_state_dict():
    from dynapp.data.transforms import normalize
    from dynapp.model import Normalize

    x = torch.randint(0, 256, (2, 3, S * T, 8, 8), dtype=torch.uint8)
    norm = Normalize()
    assert torch.equal(norm(x), normalize(x, channel_dim=1))
    assert torch.equal(norm(x)[1], normalize(x[1]))  # one clip (C, T, H, W) or a batch: same numbers
    f = torch.randn(2, 3, S * T, 8, 8)
    assert norm(f) is f  # float clips are taken as normalised already
    model = build_model(representation="rgb", backbone="small2d", num_classes=K, segments=S, frames=T)
    assert not any(k.startswith("normalize") for k in model.state_dict())  # old checkpoints load as they are
    assert model.normalize.scale.dtype == torch.float32
