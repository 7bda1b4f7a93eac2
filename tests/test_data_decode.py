"""Decoding: codecs, containers, frame order, seeking vs counting, sizes, gray/alpha, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dynapp.data.decode import VideoDecodeError, count_frames, list_frame_files, open_video, read_frames
from dynapp.data.encode import ramp_frames, write_video


def _decoded_index(clip: torch.Tensor) -> np.ndarray:
    """Frame indices of a clip of ramp_frames(step=8, base=16), read off the mean level."""
    means = clip.float().mean(dim=(0, 2, 3)).numpy()
    return np.round((means - 16) / 8).astype(int)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    frames = ramp_frames(20, 24, 32)
    return {
        "h264_mp4": write_video(d / "a.mp4", frames),
        "mpeg4_avi": write_video(d / "b.avi", frames, codec="mpeg4"),
        "hevc_mkv": write_video(d / "c.mkv", frames, codec="libx265"),
    }


@pytest.mark.parametrize("kind", ["h264_mp4", "mpeg4_avi", "hevc_mkv"])
def test_codecs_give_the_requested_frames_in_order(videos, kind):
    assert count_frames(videos[kind]) == 20  # MKV has no count in its header: packets are counted
    idx = [19, 0, 7, 7, 3, 12]
    clip = read_frames(videos[kind], idx)
    assert clip.dtype == torch.uint8 and clip.shape == (3, 6, 24, 32)
    assert _decoded_index(clip).tolist() == idx


@pytest.mark.parametrize("codec,ext", [("libx264", "mp4"), ("mpeg4", "avi")])
def test_writing_the_same_frames_gives_the_same_bytes(tmp_path, codec, ext):
    # small noisy clips: x264's macroblock tree made about one write in four differ (write_video turns
    # it off).  libx265 differs on every write of such clips whatever its threading options, so the
    # tests that need identical files (training on generated videos) use H.264 or MPEG-4.
    for seed in range(6):
        rng = np.random.default_rng(seed)
        frames = np.clip(rng.normal(120, 30, (16, 32, 32, 3)), 0, 255).astype(np.uint8)
        writes = {write_video(tmp_path / f"{seed}-{i}.{ext}", frames, codec=codec).read_bytes() for i in range(3)}
        assert len(writes) == 1, (codec, seed)


def _panning(num_frames: int, size: int = 32) -> np.ndarray:
    """(T, H, W, 3) frames of a smooth texture moving 1 px per frame: encoders use P and B frames."""
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (size // 4, 2 * size // 4, 3), dtype=np.uint8))
    texture = np.asarray(small.resize((2 * size + num_frames, 2 * size), Image.BICUBIC))
    return np.stack([texture[:size, t:t + size] for t in range(num_frames)])


# A keyframe every 10 frames forces real seeks; B-frames give the skipped (unreferenced) frames.
SEEK_CODECS = {
    "h264": ("mp4", "libx264", {"g": "10", "x264-params": "bframes=3:b-adapt=0"}),
    "mpeg4": ("avi", "mpeg4", {"g": "10", "bf": "2"}),
    "hevc": ("mkv", "libx265", {"g": "10", "x265-params": "log-level=none:bframes=3"}),
}


@pytest.fixture(scope="module")
def seek_videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("seek")
    frames = _panning(120)
    return {name: write_video(d / f"long.{ext}", frames, codec=codec, options=opts)
            for name, (ext, codec, opts) in SEEK_CODECS.items()}


def _reference(video, idx) -> torch.Tensor:
    """The frames ``idx`` by decoding every frame from the start (no seeking, no skipping)."""
    ref = video._decode_counting(np.unique(idx), lambda f: f.to_ndarray(format="rgb24"))
    return torch.from_numpy(np.stack([ref[int(i)] for i in idx])).permute(3, 0, 1, 2)


@pytest.mark.parametrize("threads", [1, 0])
@pytest.mark.parametrize("codec", sorted(SEEK_CODECS))
def test_seeking_and_skipping_give_the_frames_of_a_full_decode(seek_videos, codec, threads):
    rng = np.random.default_rng(0)
    with open_video(seek_videos[codec], threads=threads) as video:
        assert video.num_frames == 120
        video.SEEK_GAP = 4  # seek often
        cases = [np.sort(rng.choice(120, size=8, replace=False)) for _ in range(4)]
        cases += [np.arange(30, 38), np.array([3, 3, 60, 119]), np.arange(0, 120, 8)]
        for idx in cases:
            assert torch.equal(video.read(idx), _reference(video, idx)), (codec, idx)


@pytest.mark.parametrize("codec", sorted(SEEK_CODECS))
def test_decoding_stops_at_the_last_wanted_frame_and_skips_unreferenced_frames(seek_videos, codec):
    with open_video(seek_videos[codec]) as video:
        decoded = []
        frames_from_here = video._frames_from_here

        def counting(wanted):
            for frame in frames_from_here(wanted):
                decoded.append(frame.pts)
                yield frame

        video._frames_from_here = counting
        video.read([2, 5])
        assert len(decoded) <= 6 + 4, codec  # frames 0-5 plus the B-frame reordering delay
        decoded.clear()
        video.SEEK_GAP = 1000  # one pass over the video, from its first frame
        idx = [0, 40, 80, 119]
        clip = video.read(idx)
        skipped = len(decoded)
        decoded.clear()
        assert torch.equal(clip, _reference(video, idx))
        assert len(decoded) == 120  # the reference decodes every frame
        assert skipped < 120, codec  # unreferenced frames between the wanted ones were dropped


@pytest.mark.parametrize("size", [(48, 20), (13, 27), (7, 5)])  # portrait, odd, tiny (H, W)
def test_any_size_and_aspect_becomes_rgb_of_the_short_side(tmp_path, size):
    h, w = size
    path = write_video(tmp_path / "v.mkv", ramp_frames(6, h, w), codec="ffv1")  # odd sizes need 4:4:4/ffv1
    clip = read_frames(path, [0, 5])
    assert clip.shape == (3, 2, h, w)
    small = read_frames(path, [0, 5], short_side=10)
    assert min(small.shape[-2:]) == 10
    assert abs(small.shape[-1] / small.shape[-2] - w / h) < 0.25


def test_grayscale_video_and_alpha_png_video_come_out_rgb(tmp_path):
    gray = np.tile(np.linspace(0, 255, 16, dtype=np.uint8)[None, None, :], (5, 12, 1))  # (T, H, W)
    g = write_video(tmp_path / "gray.mkv", gray, codec="ffv1", pix_fmt="gray")
    clip = read_frames(g, [0, 4])
    assert clip.shape == (3, 2, 12, 16)
    assert torch.equal(clip[0], clip[1]) and torch.equal(clip[1], clip[2])
    assert clip[0, 0, 0].tolist() == gray[0, 0].tolist()
    a = write_video(tmp_path / "alpha.mov", ramp_frames(4, 10, 10), codec="png", pix_fmt="rgba")
    assert read_frames(a, [1]).shape == (3, 1, 10, 10)


def test_frame_folder_natural_order_gray_and_alpha(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(12):  # img_1 ... img_12: lexical order would put img_10 before img_2
        level = 16 + 8 * t
        if t % 3 == 0:
            img = Image.new("L", (10, 8), level)
        elif t % 3 == 1:
            img = Image.new("RGBA", (10, 8), (level, level, level, 128))
        else:
            img = Image.new("RGB", (10, 8), (level,) * 3)
        img.save(folder / f"img_{t + 1}.png")
    (folder / "notes.txt").write_text("not a frame")
    assert [p.name for p in list_frame_files(folder)][:3] == ["img_1.png", "img_2.png", "img_3.png"]
    assert count_frames(folder) == 12
    clip = read_frames(folder, [11, 0, 9, 1, 2])
    assert clip.shape == (3, 5, 8, 10)
    assert _decoded_index(clip).tolist() == [11, 0, 9, 1, 2]
    assert read_frames(folder, [11], short_side=4).shape == (3, 1, 4, 5)


def test_bad_sources_raise_an_error_naming_them(tmp_path, videos):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"this is not a video " * 200)
    cut = tmp_path / "cut.mp4"  # MP4 whose index (moov) is lost
    cut.write_bytes(videos["h264_mp4"].read_bytes()[:300])
    no_frames = tmp_path / "no_frames"
    no_frames.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "00001.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    cases = {
        tmp_path / "missing.mp4": "missing",
        empty: "empty",
        junk: "not a readable video",
        cut: "not a readable video",
        no_frames: "no JPEG/PNG",
        broken: "unreadable frame image",
    }
    for path, reason in cases.items():
        with pytest.raises(VideoDecodeError) as info:
            read_frames(path, [0])
        assert path.name in str(info.value) and reason in info.value.reason


def test_truncated_avi_is_reported_when_frames_past_the_cut_are_wanted(tmp_path):
    path = write_video(tmp_path / "long.avi", ramp_frames(200, 16, 16, step=1), codec="mpeg4")
    data = path.read_bytes()
    movi = data.index(b"movi")  # keep the header, cut the frame data at a third
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: movi + (len(data) - movi) // 3])  # the header still announces 200 frames
    assert count_frames(cut) == 200
    assert count_frames(cut, exact=True) < 150
    read_frames(cut, [0, 10])  # frames before the cut are fine
    with pytest.raises(VideoDecodeError, match="truncated"):
        read_frames(cut, [0, 199])


def test_unknown_backend_and_missing_torchcodec_are_clear_errors(videos):
    with pytest.raises(ValueError, match="unknown decoding backend"):
        read_frames(videos["h264_mp4"], [0], backend="decord")
    try:
        import torchcodec  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="not installed"):
            read_frames(videos["h264_mp4"], [0], backend="torchcodec")


def test_jpeg_frame_folder_downscaled_while_decoding(tmp_path):
    for t, img in enumerate(ramp_frames(6, 48, 64)):
        Image.fromarray(img).save(tmp_path / f"{t + 1:05d}.jpg", quality=95)
    clip = read_frames(tmp_path, [5, 0, 3], short_side=12)  # JPEG draft mode, then an exact resize
    assert clip.shape == (3, 3, 12, 16)
    assert _decoded_index(clip).tolist() == [5, 0, 3]


def test_jpeg_folders_decode_with_libjpeg_turbo_like_pil_and_name_a_broken_frame(tmp_path):
    frames = _panning(6)
    for t, img in enumerate(frames):
        Image.fromarray(img).save(tmp_path / f"{t + 1:05d}.jpg", quality=90)
    Image.fromarray(frames[0][..., 0]).save(tmp_path / "00007.jpg")  # a grey JPEG comes out RGB
    clip = read_frames(tmp_path, [6, 0, 3, 3])
    with_pil = torch.from_numpy(np.stack([np.asarray(Image.open(tmp_path / f"{i + 1:05d}.jpg").convert("RGB"))
                                          for i in (6, 0, 3, 3)])).permute(3, 0, 1, 2)
    assert clip.shape == (3, 4, 32, 32) and torch.equal(clip, with_pil)
    (tmp_path / "00004.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(VideoDecodeError, match="00004.jpg"):
        read_frames(tmp_path, [0, 3])


@pytest.fixture
def pyav19_open(monkeypatch):
    """``av.open`` with PyAV 19's parameters: ``metadata_errors`` is gone (a TypeError, as there)."""
    import av

    import dynapp.data.decode as decode

    real_open = av.open
    calls = []

    def open_19(file, mode=None, format=None, options=None, container_options=None, buffer_size=32768,
                timeout=None, io_open=None, hwaccel=None):
        calls.append(file)
        return real_open(file, mode=mode, format=format, options=options, container_options=container_options,
                         buffer_size=buffer_size, timeout=timeout)

    monkeypatch.setattr(av, "open", open_19)
    monkeypatch.setattr(decode, "_AV_OPEN_KWARGS", dict(decode._AV_OPEN_KWARGS))
    return calls


@pytest.mark.parametrize("kind", ["h264_mp4", "mpeg4_avi", "hevc_mkv"])
def test_videos_open_with_the_pyav_19_calling_convention(videos, kind, pyav19_open):
    idx = [5, 0, 19]
    assert _decoded_index(read_frames(videos[kind], idx)).tolist() == idx
    assert count_frames(videos[kind], exact=True) == 20
    assert str(videos[kind]) in pyav19_open


def test_a_dataset_loads_with_the_pyav_19_calling_convention_in_workers(tmp_path, pyav19_open):
    # DataLoader workers are forked from this process, so they inherit the PyAV 19 av.open.
    from torch.utils.data import DataLoader

    from dynapp.data import build_dataset

    for split in ("train", "val"):
        for c in range(2):
            (tmp_path / split / f"c{c}").mkdir(parents=True)
            write_video(tmp_path / split / f"c{c}" / "v.mp4", ramp_frames(16, 32, 32))
    ds = build_dataset("folder", tmp_path, train=True, segments=2, frames=2, crop_size=24)
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert sum(b[0].shape[0] for b in batches) == 2 and ds.num_bad == 0


def test_av_open_type_errors_other_than_the_keyword_are_not_swallowed(monkeypatch):
    import av

    import dynapp.data.decode as decode

    def broken(*args, **kwargs):
        raise TypeError("something else entirely")

    monkeypatch.setattr(av, "open", broken)
    monkeypatch.setattr(decode, "_AV_OPEN_KWARGS", {"metadata_errors": "ignore"})
    with pytest.raises(TypeError, match="something else"):
        decode._av_open("x.mp4")
    assert decode._AV_OPEN_KWARGS == {"metadata_errors": "ignore"}


@pytest.mark.parametrize("threads,expected", [(1, "NONE"), (0, "SLICE"), (2, "SLICE")])
def test_more_decoding_threads_are_slice_threads_never_frame_threads(videos, threads, expected):
    with open_video(videos["h264_mp4"], threads=threads) as video:
        assert str(video.stream.thread_type).rsplit(".", 1)[-1].upper() == expected
        assert _decoded_index(video.read([0, 9, 3])).tolist() == [0, 9, 3]
