"""Tests of dynapp.representations.flow and dynapp.data.flow_files: OpenCV TV-L1 / Farneback on a translated pattern, quantised storage."""

import numpy as np
import pytest
import torch

from dynapp.data.flow_files import dequantise_flow, load_flow, precompute_flow, quantise_flow, save_flow
from dynapp.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dynapp.representations.flow import clip_flow, flow_farneback, flow_to_input, flow_tvl1, to_gray_uint8, video_flow
from dynapp.representations import build_representation

cv2 = pytest.importorskip("cv2")

SIZE = 48


def _texture(seed=0, size=SIZE + 16):
    """A smooth random texture in [0, 255] (blurred noise: flow methods need gradients)."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (size, size)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255
    return smooth


def _shifted_pair(dx, dy, seed=0):
    """Two uint8 crops of one texture, the second showing the content moved by (dx, dy) pixels."""
    tex = _texture(seed)
    o = 8
    a = tex[o : o + SIZE, o : o + SIZE]
    # Content at (x, y) in frame 1 is at (x + dx, y + dy) in frame 2.
    b = tex[o - dy : o - dy + SIZE, o - dx : o - dx + SIZE]
    return a.round().astype(np.uint8), b.round().astype(np.uint8)


def _interior_median(flow):
    m = 10
    return float(np.median(flow[0, m:-m, m:-m])), float(np.median(flow[1, m:-m, m:-m]))


@pytest.mark.parametrize("method", [flow_tvl1, flow_farneback])
@pytest.mark.parametrize("dx,dy", [(2, 0), (-1, 2)])
def test_translation_sign_and_magnitude(method, dx, dy):
    a, b = _shifted_pair(dx, dy)
    flow = method(a, b)
    assert flow.shape == (2, SIZE, SIZE) and flow.dtype == np.float32
    mx, my = _interior_median(flow)
    assert abs(mx - dx) < 0.3, (mx, my)
    assert abs(my - dy) < 0.3, (mx, my)


@pytest.mark.parametrize("method", ["tvl1", "farneback"])
def test_static_pair_gives_zero_flow(method):
    a, _ = _shifted_pair(0, 0)
    flow = video_flow(np.stack([a, a, a]), method)
    assert flow.shape == (2, 2, SIZE, SIZE)
    # TV-L1 is exactly still; Farneback leaves a few hundredths of a pixel at the borders.
    assert np.abs(flow).max() < 0.1
    assert np.abs(flow[:, :, 10:-10, 10:-10]).max() < 0.01


def test_to_gray_uint8_inverts_normalisation():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)  # (F, H, W, 3)
    x = torch.from_numpy(rgb).float().div(255).permute(3, 0, 1, 2)  # (3, F, H, W)
    m = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    gray = to_gray_uint8(((x - m) / s).unsqueeze(0))[0]  # (F, H, W)
    ref = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb])
    assert gray.dtype == np.uint8 and gray.shape == (2, 4, 5)
    assert np.abs(gray.astype(int) - ref.astype(int)).max() <= 1


def _normalised_clip(frames_gray):
    """Gray uint8 (F, H, W) -> a normalised RGB clip (1, 3, F, H, W) of that gray video."""
    x = torch.from_numpy(frames_gray).float().div(255).unsqueeze(0).expand(3, -1, -1, -1)
    m = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return ((x - m) / s).unsqueeze(0)


@pytest.mark.parametrize("name", ["flow_farneback", "flow_tvl1"])
def test_flow_representation_layout(name):
    """Two segments of 3 frames: segment 0 moves right by 2 px per frame, segment 1 down by 1 px."""
    tex = _texture(3, size=SIZE + 24)
    o = 12
    crop = lambda dx, dy: tex[o - dy : o - dy + SIZE, o - dx : o - dx + SIZE].round().astype(np.uint8)
    frames = np.stack([crop(0, 0), crop(2, 0), crop(4, 0), crop(0, 0), crop(0, 1), crop(0, 2)])
    clip = _normalised_clip(frames)
    rep = build_representation(name, segments=2, frames=3, bound=10.0)
    out = rep(clip).frames
    assert rep.out_channels == 4 and rep.out_frames == 2
    assert out.shape == (1, 4, 2, SIZE, SIZE) and out.dtype == clip.dtype
    med = out[0, :, :, 10:-10, 10:-10].flatten(2).median(-1).values * 10.0  # (4, 2) pixels
    expected = torch.tensor([[2, 0], [0, 1], [2, 0], [0, 1]], dtype=torch.float32)  # rows x1, y1, x2, y2
    torch.testing.assert_close(med, expected, atol=0.3, rtol=0)


def test_clip_flow_bound_and_scale():
    a, b = _shifted_pair(3, 0)
    clip = _normalised_clip(np.stack([a, b]))
    out = clip_flow(clip, 1, 2, method="farneback", bound=1.5)
    # 3 px clipped to the 1.5 px bound -> exactly 1 in the interior.
    assert out.abs().max() <= 1.0
    assert torch.median(out[0, 0, 0, 10:-10, 10:-10]) == 1.0
    torch.testing.assert_close(flow_to_input(np.array([-30.0, -5.0, 0.0, 5.0, 30.0]), 20.0), torch.tensor([-1.0, -0.25, 0.0, 0.25, 1.0]))


def test_flow_rejects_bad_input():
    with pytest.raises(ValueError, match="in_channels=3"):
        build_representation("flow_tvl1", segments=1, frames=4, in_channels=2)
    with pytest.raises(ValueError, match="unknown flow method"):
        video_flow(np.zeros((2, 8, 8), np.uint8), "lucas")
    with pytest.raises(ValueError, match="unknown farneback option"):
        build_representation("flow_farneback", segments=1, frames=4, lambda_=0.1)
    with pytest.raises(ValueError, match="unknown tvl1 option"):
        build_representation("flow_tvl1", segments=1, frames=4, winsize=9)
    with pytest.raises(ValueError, match="uint8 grayscale"):
        flow_farneback(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32))


def test_quantisation_roundtrip():
    f = np.linspace(-25, 25, 101, dtype=np.float32)
    q = quantise_flow(f, 20.0)
    assert q.dtype == np.uint8 and q.min() == 0 and q.max() == 255
    back = dequantise_flow(q, 20.0)
    assert np.abs(back - np.clip(f, -20, 20)).max() <= 20.0 / 255 + 1e-4


@pytest.mark.parametrize("name", ["flow.npy", "flowdir"])
def test_save_load_precompute(tmp_path, name):
    a, b = _shifted_pair(2, 0)
    rgb = np.stack([np.repeat(f[..., None], 3, -1) for f in (a, b, a)])  # (3, H, W, 3)
    flow = precompute_flow(rgb, tmp_path / name, method="farneback")
    assert flow.shape == (2, 2, SIZE, SIZE)
    loaded = load_flow(tmp_path / name)
    assert loaded.shape == flow.shape and loaded.dtype == np.float32
    assert np.abs(loaded - flow).max() <= 20.0 / 255 + 1e-5
    if name == "flowdir":
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == [
            "flow_x_00001.png", "flow_x_00002.png", "flow_y_00001.png", "flow_y_00002.png"
        ]
    # Saved flow keeps the sign of the motion: right in field 1, back left in field 2.
    assert np.median(loaded[0, 0]) > 1.5 and np.median(loaded[1, 0]) < -1.5


def test_load_flow_errors(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_flow(tmp_path / "bad.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no flow_x"):
        load_flow(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"\(F, 2, H, W\)"):
        save_flow(tmp_path / "x.npy", np.zeros((2, 4, 4)))


def test_precompute_flow_cli(tmp_path):
    """`dynapp precompute-flow` on a frame folder writes the quantised flow; bad input is one line."""
    from typer.testing import CliRunner

    from dynapp.cli import app

    folder = tmp_path / "frames"
    folder.mkdir()
    a, b = _shifted_pair(2, 0)
    for i, f in enumerate((a, b, a), start=1):
        cv2.imwrite(str(folder / f"img_{i:05d}.png"), np.repeat(f[..., None], 3, -1))
    runner = CliRunner()
    res = runner.invoke(app, ["precompute-flow", str(folder), "--out", str(tmp_path / "f.npy"), "--method", "farneback"])
    assert res.exit_code == 0, res.output
    assert "wrote 2 flow fields" in res.output
    flow = load_flow(tmp_path / "f.npy")
    assert flow.shape == (2, 2, SIZE, SIZE)
    assert np.median(flow[0, 0]) > 1.5 and np.median(flow[1, 0]) < -1.5
    res = runner.invoke(app, ["precompute-flow", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "g.npy")])
    assert res.exit_code == 1 and "error:" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["precompute-flow", str(folder), "--out", str(tmp_path / "g.npy"), "--method", "lk"])
    assert res.exit_code == 1 and "unknown flow method" in res.output
