"""Backbones: temporal shift, parameter counts against the papers, checkpoint conversion, shapes."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torchvision

from dynapp.backbones import BACKBONES, build_backbone, convert_x3d_checkpoint, inflate_input_kernel, temporal_shift
from dynapp.backbones.vit import VideoViT, image_to_video_vit_state_dict
from dynapp.backbones.x3d import X3D, round_width

TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2, img_size=32)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# Temporal shift (TSM)


def _naive_shift(x: torch.Tensor, segments: int, div: int) -> torch.Tensor:
    nt, c, h, w = x.shape
    fold = c // div
    out = torch.zeros_like(x)
    for n in range(nt // segments):
        for t in range(segments):
            i = n * segments + t
            for ch in range(c):
                if ch < fold:  # from the next segment
                    if t + 1 < segments:
                        out[i, ch] = x[i + 1, ch]
                elif ch < 2 * fold:  # from the previous segment
                    if t > 0:
                        out[i, ch] = x[i - 1, ch]
                else:
                    out[i, ch] = x[i, ch]
    return out


@pytest.mark.parametrize("segments,channels,div", [(4, 16, 8), (3, 12, 4), (1, 8, 8)])
def test_temporal_shift_equals_naive_loop(segments, channels, div):
    x = torch.randn(2 * segments, channels, 3, 2)
    assert torch.equal(temporal_shift(x, segments, div), _naive_shift(x, segments, div))


def test_temporal_shift_rejects_bad_batch():
    with pytest.raises(ValueError, match="multiple of num_segments"):
        temporal_shift(torch.randn(5, 8, 2, 2), 4)


def test_tsm_mixes_neighbouring_segments_only_when_shifting():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 32, 32)
    y = x.clone()
    y[:, :, 0] += 1.0  # change segment 0 only
    for div, expect_change in ((8, True), (0, False)):
        net = build_backbone("tsm_resnet50", num_segments=4, arch="resnet18", shift_div=div).eval()
        with torch.no_grad():
            a, b = net(x), net(y)
        assert a.shape == (1, 4, 512)
        assert not torch.allclose(a[:, 0], b[:, 0])
        for s in (1, 2, 3):  # 8 shifting blocks reach every segment; without shifts none is reached
            assert (not torch.allclose(a[:, s], b[:, s])) == expect_change


def test_tsm_keeps_torchvision_names_and_loads_pretrained_file(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    net = build_backbone("tsm_resnet50", num_segments=2, arch="resnet18", in_channels=6, pretrained=str(path))
    assert set(net.state_dict()) == {k for k in ref.state_dict() if not k.startswith("fc.")}
    assert torch.equal(net.layer3[1].conv1.weight, ref.layer3[1].conv1.weight)
    expected = ref.conv1.weight.mean(dim=1, keepdim=True).expand(-1, 6, -1, -1)
    assert torch.equal(net.conv1.weight, expected)


def test_tsm_resnet50_parameters_match_paper():
    with torch.device("meta"):
        net = build_backbone("tsm_resnet50", num_segments=8)
    total = _params(net) + 2048 * 174 + 174  # + the 174-class classifier (Something-Something V1)
    assert net.num_features == 2048
    assert abs(total - 23.8e6) / 23.8e6 < 0.05


# ---------------------------------------------------------------------------------------------
# X3D


def test_x3d_parameters_match_paper():
    with torch.device("meta"):
        net = X3D(num_frames=4)
    assert net.num_features == 2048
    for classes, published in ((400, 3.79e6), (174, 3.33e6)):
        total = _params(net) + 2048 * classes + classes
        assert abs(total - published) / published < 0.05, (classes, total)


def test_x3d_layout():
    with torch.device("meta"):
        net = X3D(num_frames=4)
    assert [len(s) for s in net.stages] == [3, 5, 11, 7]
    assert [s[0].conv_c.out_channels for s in net.stages] == [24, 48, 96, 192]
    assert [s[0].conv_a.out_channels for s in net.stages] == [54, 108, 216, 432]
    # SE on the 1st, 3rd, ... block, with X3D's rounded widths.
    assert [[b.se is not None for b in s] for s in net.stages][0] == [True, False, True]
    assert [s[0].se.fc1.out_channels for s in net.stages] == [8, 8, 16, 32]
    assert net.stages[2][10].se is not None and net.stages[3][5].se is None
    assert net.stem.conv_t.groups == 24 and net.stages[1][2].conv_b.groups == 108
    assert (net.conv5.in_channels, net.conv5.out_channels, net.lin5.out_channels) == (192, 432, 2048)
    assert round_width(432, 0.0625) == 32 and round_width(54, 0.0625) == 8


def test_x3d_output_and_pooling():
    torch.manual_seed(0)
    net = build_backbone("x3d_xs", num_segments=4).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 3, 4, 32, 32))
    assert y.shape == (2, 1, 2048) and torch.isfinite(y).all() and (y >= 0).all()


def _slowfast_reference(depths=(3, 5, 11, 7), widths=(24, 48, 96, 192), inner=(54, 108, 216, 432), se=(8, 8, 16, 32)):
    """PySlowFast's X3D parameter names and shapes, written out from its layout
    (video_model_builder.X3D, stem_helper.X3DStem, resnet_helper.ResBlock/X3DTransform, head_helper.X3DHead)."""
    ref = {}

    def bn(name, c):
        ref.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,), f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})

    ref["s1.pathway0_stem.conv_xy.weight"] = (24, 3, 1, 3, 3)
    ref["s1.pathway0_stem.conv.weight"] = (24, 1, 5, 1, 1)
    bn("s1.pathway0_stem.bn", 24)
    dim_in = 24
    for s, (depth, w, wi, sw) in enumerate(zip(depths, widths, inner, se)):
        for i in range(depth):
            p = f"s{s + 2}.pathway0_res{i}"
            if i == 0:
                ref[f"{p}.branch1.weight"] = (w, dim_in, 1, 1, 1)
                bn(f"{p}.branch1_bn", w)
            ref[f"{p}.branch2.a.weight"] = (wi, dim_in if i == 0 else w, 1, 1, 1)
            bn(f"{p}.branch2.a_bn", wi)
            ref[f"{p}.branch2.b.weight"] = (wi, 1, 3, 3, 3)
            bn(f"{p}.branch2.b_bn", wi)
            if i % 2 == 0:
                ref.update({f"{p}.branch2.se.fc1.weight": (sw, wi, 1, 1, 1), f"{p}.branch2.se.fc1.bias": (sw,)})
                ref.update({f"{p}.branch2.se.fc2.weight": (wi, sw, 1, 1, 1), f"{p}.branch2.se.fc2.bias": (wi,)})
            ref[f"{p}.branch2.c.weight"] = (w, wi, 1, 1, 1)
            bn(f"{p}.branch2.c_bn", w)
        dim_in = w
    ref["head.conv_5.weight"] = (432, 192, 1, 1, 1)
    bn("head.conv_5_bn", 432)
    ref["head.lin_5.weight"] = (2048, 432, 1, 1, 1)
    ref["head.projection.weight"] = (400, 2048)
    ref["head.projection.bias"] = (400,)
    return ref


def _ptv_from_slowfast_names(ref):
    """PyTorchVideo's names for the same tensors (create_x3d: Net.blocks, ResStage.res_blocks,
    BottleneckBlock conv_/norm_, fvcore SqueezeExcitation.block, ProjectedPool).  PyTorchVideo has
    no BN on the shortcut of res2's first block (equal widths), so that one is left out."""
    out = {}
    table = [
        ("s1.pathway0_stem.conv_xy.", "blocks.0.conv.conv_t."),
        ("s1.pathway0_stem.conv.", "blocks.0.conv.conv_xy."),
        ("s1.pathway0_stem.bn.", "blocks.0.norm."),
        ("head.conv_5_bn.", "blocks.5.pool.pre_norm."),
        ("head.conv_5.", "blocks.5.pool.pre_conv."),
        ("head.lin_5.", "blocks.5.pool.post_conv."),
        ("head.projection.", "blocks.5.proj."),
    ]
    block = [
        ("branch1_bn.", "branch1_norm."), ("branch1.", "branch1_conv."),
        ("branch2.a_bn.", "branch2.norm_a."), ("branch2.a.", "branch2.conv_a."),
        ("branch2.b_bn.", "branch2.norm_b.0."), ("branch2.b.", "branch2.conv_b."),
        ("branch2.se.fc1.", "branch2.norm_b.1.block.0."), ("branch2.se.fc2.", "branch2.norm_b.1.block.2."),
        ("branch2.c_bn.", "branch2.norm_c."), ("branch2.c.", "branch2.conv_c."),
    ]
    for key, shape in ref.items():
        if key.startswith("s2.pathway0_res0.branch1_bn."):
            continue
        new = None
        for a, b in table:
            if key.startswith(a):
                new = b + key[len(a):]
                break
        if new is None:
            stage, rest = key.split(".", 1)
            res, rest = rest.split(".", 1)
            i = int(res[len("pathway0_res"):])
            for a, b in block:
                if rest.startswith(a):
                    new = f"blocks.{int(stage[1]) - 1}.res_blocks.{i}.{b}{rest[len(a):]}"
                    break
        assert new is not None, key
        out[new] = shape
    return out


def _fake(ref, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(shape, generator=g)) for k, shape in ref.items()}


def test_convert_slowfast_checkpoint_loads_every_tensor(tmp_path):
    ref = _slowfast_reference()
    fake = _fake(ref)
    sd = convert_x3d_checkpoint({"module." + k: v for k, v in fake.items()})
    net = X3D(num_frames=4)
    assert set(sd) == set(net.state_dict())  # the classifier is dropped, nothing is missing
    net.load_state_dict(sd, strict=True)
    assert torch.equal(net.stem.conv_t.weight, fake["s1.pathway0_stem.conv.weight"])
    assert torch.equal(net.stages[2][4].se.fc2.bias, fake["s4.pathway0_res4.branch2.se.fc2.bias"])
    assert torch.equal(net.stages[3][6].bn_c.running_var, fake["s5.pathway0_res6.branch2.c_bn.running_var"])
    assert torch.equal(net.lin5.weight, fake["head.lin_5.weight"])
    # Through a file, wrapped like PySlowFast's checkpoints, into a 2-channel first layer.
    path = tmp_path / "x3d.pyth"
    torch.save({"model_state": fake, "epoch": 300}, path)
    net2 = build_backbone("x3d_m", num_segments=16, in_channels=2, pretrained=str(path))
    expected = inflate_input_kernel(fake["s1.pathway0_stem.conv_xy.weight"], 2)
    assert torch.equal(net2.stem.conv_xy.weight, expected)
    assert torch.equal(net2.stages[1][3].conv_b.weight, fake["s3.pathway0_res3.branch2.b.weight"])


def test_convert_pytorchvideo_checkpoint_fills_identity_shortcut_bn():
    ref = _ptv_from_slowfast_names(_slowfast_reference())
    fake = _fake(ref, seed=1)
    sd = convert_x3d_checkpoint({"model_state": fake})
    net = X3D(num_frames=4)
    net.load_state_dict(sd, strict=True)
    assert torch.equal(net.stem.conv_xy.weight, fake["blocks.0.conv.conv_t.weight"])  # spatial 1x3x3
    assert torch.equal(net.stem.conv_t.weight, fake["blocks.0.conv.conv_xy.weight"])  # temporal 5x1x1
    assert torch.equal(net.stages[0][2].se.fc1.weight, fake["blocks.1.res_blocks.2.branch2.norm_b.1.block.0.weight"])
    assert torch.equal(net.bn5.bias, fake["blocks.5.pool.pre_norm.bias"])
    # The missing shortcut BN becomes the identity in eval mode.
    bn = net.stages[0][0].skip_bn.eval()
    x = torch.randn(2, 24, 1, 3, 3)
    assert torch.allclose(bn(x), x, atol=1e-6)
    assert torch.equal(net.stages[1][0].skip_bn.weight, fake["blocks.2.res_blocks.0.branch1_norm.weight"])


def test_convert_rejects_unknown_keys_and_passes_own_names():
    net = X3D(num_frames=4)
    own = net.state_dict()
    assert convert_x3d_checkpoint(own).keys() == own.keys()
    bad = _fake(_slowfast_reference())
    bad["s2.pathway0_res0.branch2.mystery.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="mystery"):
        convert_x3d_checkpoint(bad)
    with pytest.raises(ValueError, match="not an X3D checkpoint"):
        convert_x3d_checkpoint({"conv1.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------
# ViT


def test_vit_per_segment_positions_attention_within_frame_and_token_mean():
    torch.manual_seed(0)
    net = build_backbone("vit_b16", num_segments=3, **TINY_VIT).eval()
    assert net.pos_embed.shape == (3, 4, 32)  # (S, P, D): one copy per segment, 2 x 2 patches
    assert torch.equal(net.pos_embed[0], net.pos_embed[2])  # duplicated at initialisation
    x = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        y = net(x)
        x2 = x.clone()
        x2[:, :, 0] = torch.randn(2, 3, 32, 32)
        y2 = net(x2)
    assert y.shape == (2, 3, 32)
    assert not torch.allclose(y[:, 0], y2[:, 0]) and torch.equal(y[:, 1:], y2[:, 1:])  # attention within a frame
    # Each segment's feature is the mean of its last-layer tokens, with its own positions.
    with torch.no_grad():
        frame = x[:, :, 1]
        tokens = net.vit.patch_embed(frame) + net.pos_embed[1]
        tokens = net.vit.norm(net.vit.blocks(tokens))
        assert torch.allclose(y[:, 1], tokens.mean(dim=1), atol=1e-5)
        # the copies are separate parameters (a random change: LayerNorm removes a constant one)
        net.pos_embed[2].add_(torch.randn_like(net.pos_embed[2]))
        y3 = net(x)
    assert torch.equal(y3[:, :2], y[:, :2]) and not torch.allclose(y3[:, 2], y[:, 2])


def test_vit_loads_image_weights_by_duplicating_positions(tmp_path):
    image = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10, **TINY_VIT)
    path = tmp_path / "vit.pth"
    torch.save(image.state_dict(), path)
    net = build_backbone("vit_b16", num_segments=4, in_channels=2, pretrained=str(path), **TINY_VIT)
    for s in range(4):
        assert torch.equal(net.pos_embed[s], image.pos_embed[0, 1:])  # class-token slot dropped
    assert torch.equal(net.vit.blocks[1].mlp.fc2.weight, image.blocks[1].mlp.fc2.weight)
    assert torch.equal(net.vit.patch_embed.proj.weight, inflate_input_kernel(image.patch_embed.proj.weight, 2))
    sd = image_to_video_vit_state_dict(image.state_dict(), VideoViT(num_segments=2, **{**TINY_VIT, "img_size": 64}))
    assert sd["pos_embed"].shape == (2, 16, 32)  # resampled to a 4 x 4 grid


def test_vit_b16_size():
    with torch.device("meta"):
        net = build_backbone("vit_b16", num_segments=8)
    assert net.num_features == 768
    # 85.8M for ViT-B/16 without class token and head, plus 7 more copies of the 196 x 768 positions.
    assert abs(_params(net) - (85.8e6 + 7 * 196 * 768)) / 86e6 < 0.01


# ---------------------------------------------------------------------------------------------
# Shared behaviour


def _tiny_kwargs(name):
    return {"tsm_resnet50": dict(arch="resnet18"), "vit_b16": TINY_VIT}.get(name, {})


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_wrong_channels_or_frames_give_clear_error(name):
    net = build_backbone(name, num_segments=4, **_tiny_kwargs(name))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, 4, H, W\), got \(1, 2, 4, 32, 32\)"):
        net(torch.randn(1, 2, 4, 32, 32))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, 4, H, W\), got \(1, 3, 5, 32, 32\)"):
        net(torch.randn(1, 3, 5, 32, 32))
    with pytest.raises(ValueError, match="expects input of shape"):
        net(torch.randn(3, 4, 32, 32))


def test_small_tsm_is_small2d_with_the_shift_before_every_conv_but_the_first():
    torch.manual_seed(0)
    tsm = build_backbone("small_tsm", num_segments=4, widths=(16, 16, 32, 32)).eval()
    plain = build_backbone("small2d", num_segments=4, widths=(16, 16, 32, 32)).eval()
    # no parameters of its own: the same names and shapes as small2d, so small2d weights load
    assert {k: v.shape for k, v in tsm.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(tsm.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)  # (N, C, S, H, W)
    with torch.no_grad():
        h = x.transpose(1, 2).reshape(8, 3, 32, 32)
        for i, layer in enumerate(plain.features):  # reference: the naive loop shift of 1/8 each way
            h = layer(_naive_shift(h, 4, 8) if i > 0 else h)
        ref = h.mean(dim=(2, 3)).view(2, 4, -1)
        out = tsm(x)
    assert out.shape == (2, 4, 32)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, plain(x))


def test_small_tsm_relates_segments_and_small2d_does_not(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 32, 32)
    y = x.clone()
    y[:, :, 0] += 1.0  # change segment 0 only
    for name, expect_change in (("small_tsm", True), ("small2d", False)):
        net = build_backbone(name, num_segments=4).eval()
        with torch.no_grad():
            a, b = net(x), net(y)
        assert not torch.allclose(a[:, 0], b[:, 0])
        for s in (1, 2, 3):  # three shifting convs reach three segments away; small2d none
            assert (not torch.allclose(a[:, s], b[:, s])) == expect_change, (name, s)
    path = tmp_path / "small2d.pth"  # a small2d checkpoint is a small_tsm checkpoint
    torch.save(build_backbone("small2d", num_segments=4).state_dict(), path)
    net = build_backbone("small_tsm", num_segments=4, pretrained=str(path))
    assert torch.equal(net.features[1][0].weight, torch.load(path, weights_only=True)["features.1.0.weight"])
    with pytest.raises(ValueError, match="shift_div"):
        build_backbone("small_tsm", num_segments=4, shift_div=0)


def test_small_backbones_are_small():
    for name in ("small2d", "small_tsm", "small3d"):
        n = _params(build_backbone(name, num_segments=2))
        assert 100_000 <= n <= 300_000, (name, n)


def test_inflate_input_kernel():
    w = torch.randn(8, 3, 3, 3)
    out = inflate_input_kernel(w, 10)
    assert out.shape == (8, 10, 3, 3)
    assert torch.allclose(out[:, 7], w.mean(dim=1))
    assert torch.equal(inflate_input_kernel(w, 3), w)
    with pytest.raises(ValueError):
        inflate_input_kernel(torch.randn(8, 3), 2)


def test_unknown_backbone_and_missing_file():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet9000", num_segments=2)
    with pytest.raises(FileNotFoundError):
        build_backbone("small2d", num_segments=2, pretrained="/nonexistent/weights.pth")


def test_mismatched_pretrained_file_names_the_keys(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"foo.weight": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match="foo.weight"):
        build_backbone("small2d", num_segments=2, pretrained=str(path))


def test_cli_backbone_names_match_the_dict():
    from dynapp import names

    assert names.BACKBONES == tuple(BACKBONES), "add the backbone's name to dynapp/names.py, in the order of BACKBONES"


def test_every_backbone_declares_what_it_is():
    """2D backbones keep the segments (N, S, F); 3D ones take all frames and pool them to (N, 1, F)."""
    assert {n for n, e in BACKBONES.items() if e.all_frames} == {"x3d_xs", "x3d_m", "small3d"}
    for name in ("small2d", "small_tsm", "small3d"):  # the cheap ones: run them
        entry = BACKBONES[name]
        out = entry.build(num_segments=4)(torch.randn(1, 3, 4, 32, 32))
        assert out.shape[1] == (1 if entry.all_frames else 4), name
