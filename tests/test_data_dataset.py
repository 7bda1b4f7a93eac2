"""The clip Dataset: shapes, labels, multi-view mapping, bad files skipped and counted."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dynapp.data import BadVideoWarning, VideoDataset, build_dataset
from dynapp.data.annotations import Annotation
from dynapp.data.encode import ramp_frames, write_video
from dynapp.data.sampling import tsn_indices
from dynapp.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def _frame_levels(clip: torch.Tensor) -> np.ndarray:
    """Per-frame mean grey level (0..255) of a uint8 or a normalised float (3, T, H, W) clip."""
    if clip.dtype == torch.uint8:
        return clip.float().mean(dim=(0, 2, 3)).numpy()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return ((clip * std + mean) * 255).mean(dim=(0, 2, 3)).numpy()


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    """root/<class>/... with an H.264 MP4, an MPEG-4 AVI, a portrait, an odd-sized, a gray video
    and a JPEG frame folder."""
    root = tmp_path_factory.mktemp("folder")
    (root / "a").mkdir()
    (root / "b").mkdir()
    write_video(root / "a/h264.mp4", ramp_frames(20, 24, 32))
    write_video(root / "a/mpeg4.avi", ramp_frames(20, 24, 32), codec="mpeg4")
    write_video(root / "a/portrait.mp4", ramp_frames(20, 40, 16))
    write_video(root / "b/odd.mkv", ramp_frames(20, 17, 23), codec="ffv1")
    gray = ramp_frames(20, 24, 32)[..., 0]
    write_video(root / "b/gray.mkv", gray, codec="ffv1", pix_fmt="gray")
    frames = root / "b/frames"
    frames.mkdir()
    for t, img in enumerate(ramp_frames(20, 24, 32)):
        Image.fromarray(img).save(frames / f"img_{t + 1:05d}.jpg", quality=95)
    return root


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_training_items_are_rgb_clips_of_the_crop_size(folder_dataset, dtype):
    torch.manual_seed(0)
    ds = build_dataset("folder", folder_dataset, train=True, segments=2, frames=4, crop_size=16, dtype=dtype)
    assert len(ds) == 6 and ds.classes == ["a", "b"] and ds.flip
    names = [a.path.name for a in ds.items]
    for i in range(len(ds)):
        clip, label, video = ds[i]
        assert clip.shape == (3, 8, 16, 16) and clip.dtype == getattr(torch, dtype) and clip.is_contiguous()
        assert video == i and label == (0 if i < 3 else 1), names[i]
        levels = _frame_levels(clip)
        index = np.round((levels - 16) / 8)
        assert np.all(np.diff(index.reshape(2, 4), axis=1) == 1)  # T consecutive frames
        assert 0 <= index.min() and index.max() <= 19
    assert ds.num_bad == 0


def test_test_views_map_to_their_video_clip_and_crop(folder_dataset):
    ds = build_dataset("folder", folder_dataset, train=False, segments=2, frames=4, crop_size=16,
                       num_clips=2, num_crops=3)
    assert ds.views == 6 and len(ds) == 6 * ds.num_videos
    loader = DataLoader(ds, batch_size=4, shuffle=False)
    videos, labels = [], []
    for clip, label, video in loader:
        assert clip.shape[1:] == (3, 8, 16, 16)
        videos += video.tolist()
        labels += label.tolist()
    assert videos == [i // 6 for i in range(len(ds))]
    assert labels == [ds.items[v].label for v in videos]
    # The temporal clip of view k is tsn_indices(..., clip=k, num_clips=2).
    for view in range(6):
        clip, _, _ = ds[view]  # video 0 (h264.mp4, 20 frames)
        expected = tsn_indices(20, 2, 4, train=False, clip=view // 3, num_clips=2)
        assert np.abs(_frame_levels(clip) - (16 + 8 * expected)).max() < 3


def test_three_crops_cover_left_centre_right(monkeypatch):
    img = np.zeros((4, 8, 24, 3), np.uint8)
    img[..., :8, :] = 30  # left third dark, middle 120, right 220
    img[..., 8:16, :] = 120
    img[..., 16:, :] = 220
    ds = VideoDataset([Annotation(Path("unused"), 0)], segments=1, frames=2, train=False,
                      crop_size=8, num_crops=3)
    clip = torch.from_numpy(img).permute(3, 0, 1, 2)  # (3, T, 8, 24)
    monkeypatch.setattr("dynapp.data.dataset._load_clip", lambda *a, **k: (clip, clip.shape[1]))
    levels = [float(_frame_levels(ds[i][0]).mean()) for i in range(3)]
    assert np.allclose(levels, [30, 120, 220], atol=1)


@pytest.fixture()
def bad_root(tmp_path):
    root = tmp_path / "bad"
    (root / "x").mkdir(parents=True)
    write_video(root / "x/good0.mp4", ramp_frames(12, 24, 32))
    (root / "x/empty.mp4").write_bytes(b"")
    (root / "x/junk.avi").write_bytes(b"RIFF not really a video" * 50)
    write_video(root / "x/good1.mp4", ramp_frames(12, 24, 32))
    (root / "x/noframes").mkdir()  # a frame folder without frames
    long = write_video(root / "x/trunc.avi", ramp_frames(200, 16, 16, step=1), codec="mpeg4")
    data = long.read_bytes()
    movi = data.index(b"movi")
    long.write_bytes(data[: movi + (len(data) - movi) // 3])
    return root


def test_bad_files_are_skipped_warned_once_and_counted(bad_root):
    ds = build_dataset("folder", bad_root, train=False, segments=2, frames=4, crop_size=16)
    items = {a.path.name: i for i, a in enumerate(ds.items)}
    bad = {"empty.mp4", "junk.avi", "noframes", "trunc.avi"}
    with pytest.warns(BadVideoWarning) as record:
        out = [ds[i] for i in range(len(ds))]
    warned = [str(w.message) for w in record]
    assert len(warned) == 4 and all(any(name in m for m in warned) for name in bad)
    assert all(ds.items[v].path.name not in bad for _, _, v in out)  # replacements only
    # Deterministic replacement: a bad video is replaced by the next readable one in the list.
    order = [a.path.name for a in ds.items]
    for i, (_, _, v) in enumerate(out):
        j = i
        while order[j] in bad:
            j = (j + 1) % len(order)
        assert v == j
    assert ds.num_bad == 4
    assert {b.path.name for b in ds.bad_items()} == bad
    reasons = {b.path.name: b.reason for b in ds.bad_items()}
    assert "empty" in reasons["empty.mp4"] and "truncated" in reasons["trunc.avi"]
    # Known bad files are not decoded nor warned about again.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[items["empty.mp4"]]


def test_bad_files_found_in_dataloader_workers_are_counted_in_the_main_process(bad_root):
    ds = build_dataset("folder", bad_root, train=True, segments=2, frames=4, crop_size=16)
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    seen = [int(v) for _, _, batch in loader for v in batch]
    assert len(seen) == len(ds)
    assert ds.num_bad == 4
    bad = {b.path.name: b.reason for b in ds.bad_items()}  # reasons re-read here
    assert set(bad) == {"empty.mp4", "junk.avi", "noframes", "trunc.avi"}
    assert "not a readable video" in bad["junk.avi"]


def test_missing_path_in_a_list_and_all_bad_raises(tmp_path):
    write_video(tmp_path / "ok.mp4", ramp_frames(10, 24, 32))
    (tmp_path / "train.txt").write_text("gone.mp4 0\nok.mp4 1\n")
    ds = build_dataset("list", tmp_path, train=True, segments=1, frames=2, crop_size=8)
    with pytest.warns(BadVideoWarning, match="gone.mp4"):
        clip, label, video = ds[0]
    assert (label, video) == (1, 1) and ds.bad_items()[0].reason.startswith("missing")
    (tmp_path / "train.txt").write_text("gone.mp4 0\nalso_gone.mp4 1\n")
    ds = build_dataset("list", tmp_path, train=True, segments=1, frames=2, crop_size=8)
    with pytest.warns(BadVideoWarning), pytest.raises(RuntimeError, match="check-data"):
        ds[0]


def test_ssv1_defaults_to_no_flip_and_dense_sampling_works(tmp_path):
    (tmp_path / "something-something-v1-labels.csv").write_text("Moving something left\nMoving something right\n")
    (tmp_path / "something-something-v1-train.csv").write_text("1;Moving something right\n")
    folder = tmp_path / "20bn-something-something-v1" / "1"
    folder.mkdir(parents=True)
    for t, img in enumerate(ramp_frames(10, 24, 32)):
        Image.fromarray(img).save(folder / f"{t + 1:05d}.jpg")
    ds = build_dataset("ssv1", tmp_path, train=True, segments=2, frames=4, crop_size=16, sampling="dense", stride=2)
    assert not ds.flip
    clip, label, video = ds[0]
    assert clip.shape == (3, 8, 16, 16) and label == 1 and video == 0
    with pytest.raises(ValueError, match="unknown sampling"):
        build_dataset("ssv1", tmp_path, train=True, segments=2, frames=4, sampling="sparse")


@pytest.mark.parametrize("train", [True, False])
def test_the_model_scores_uint8_items_as_it_scores_float_items(folder_dataset, train):
    from dynapp.model import build_model

    kw = dict(train=train, segments=2, frames=4, crop_size=16)
    clips = {}
    for dtype in ("uint8", "float32"):
        ds = build_dataset("folder", folder_dataset, dtype=dtype, **kw)
        torch.manual_seed(0)
        clips[dtype] = next(iter(DataLoader(ds, batch_size=6, num_workers=1)))[0]  # (N, 3, S*T, H, W)
    u8, f32 = clips["uint8"], clips["float32"]
    assert u8.dtype == torch.uint8 and f32.dtype == torch.float32 and u8.shape == f32.shape
    assert u8.element_size() * 4 == f32.element_size()
    torch.manual_seed(0)
    model = build_model(representation="pwtp", backbone="small2d", num_classes=2, segments=2, frames=4).eval()
    with torch.no_grad():
        a, b = model(u8), model(f32)
        assert (a.logits - b.logits).abs().max() <= 1e-6 and (a.aux_loss - b.aux_loss).abs() <= 1e-6
        # separate PWTP training calls the representation alone: it is normalised there too
        da_u8, da_f32 = model.representation(u8).frames, model.representation(f32).frames
        assert (da_u8 - da_f32).abs().max() <= 1e-6


def test_frame_counts_of_headerless_containers_are_counted_once_and_options_are_checked(tmp_path, monkeypatch):
    from dynapp.data.decode import _PyAVVideo

    (tmp_path / "a").mkdir()
    write_video(tmp_path / "a/v.mkv", ramp_frames(20, 24, 32), codec="libx265")  # MKV: no frame count
    ds = build_dataset("folder", tmp_path, train=False, segments=2, frames=4, crop_size=16)
    first, _, _ = ds[0]
    calls = []
    original = _PyAVVideo._count_packets
    monkeypatch.setattr(_PyAVVideo, "_count_packets", lambda self: calls.append(1) or original(self))
    again, _, _ = ds[0]
    assert calls == [] and torch.equal(first, again)
    assert np.abs(_frame_levels(again) - (16 + 8 * tsn_indices(20, 2, 4, train=False))).max() < 3
    with pytest.raises(ValueError, match="dtype"):
        build_dataset("folder", tmp_path, train=True, segments=2, frames=4, dtype="float16")
    with pytest.raises(ValueError, match="decode_threads"):
        build_dataset("folder", tmp_path, train=True, segments=2, frames=4, decode_threads=-1)
