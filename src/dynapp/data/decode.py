"""Read chosen frames of a video file or a folder of frame images as one RGB uint8 tensor.

Two sources behind one function, :func:`read_frames` (or :func:`open_video` to learn the frame
count and read with the same open handle):

* a video file, decoded with PyAV (FFmpeg bundled in the ``av`` wheel: H.264, HEVC, MPEG-4
  part 2, VP9, ... in MP4, AVI, MKV, WebM, ...), or with torchcodec (``backend="torchcodec"``,
  the ``torchcodec`` extra and the system's FFmpeg libraries; on the CPU or, with
  ``device="cuda"``, on NVDEC), which gives the same frames (:class:`_TorchCodecVideo`);
* a folder of JPEG/PNG frames (Something-Something V1 ships ``00001.jpg``, other tools write
  ``img_00001.jpg``), sorted in natural order (``img_2`` before ``img_10``).  JPEGs decode with
  libjpeg-turbo through torchcodec's ``decode_jpeg``, else torchvision's (deprecated since
  torchvision 0.29; its warning is silenced), else PIL (also when they are shrunk while
  decoding, PIL's DCT-domain draft mode, and for PNG): :func:`_jpeg_decoders`.

Whatever the codec, pixel format, alpha channel or grayscale, the output is RGB:
``(C=3, T, H, W)`` uint8, frames in the order of the requested indices (repeats allowed).

Seeking: PyAV jumps to the keyframe before the first wanted frame (and again before any wanted
frame far ahead of the current position) and decodes forward, identifying frames by their
timestamps; frames that are neither wanted nor referenced by other frames are skipped
(``skip_frame="NONREF"``), and decoding stops at the last wanted frame.  If the timestamps are missing or inconsistent (a seek lands after the target, a
timestamp goes backwards), it falls back to decoding from the start and counting frames, which is
always exact.  The frame count comes from the container header; when the header has none (MKV,
WebM) the packets are counted; when decoding stops before the announced count, up to
``max(2, 5%)`` missing trailing frames are tolerated (their indices read the last decodable frame,
as headers are often off by a frame or two), more than that raises a "truncated" error.
Every failure is raised as :class:`VideoDecodeError` whose message names the file.

Threads: one decoding thread per video by default (a DataLoader worker per core is faster).  With
``threads != 1`` PyAV uses FFmpeg's *slice* threads only.  Frame threading (PyAV's ``"AUTO"`` and
``"FRAME"``) is never used: this reader stops decoding at the last wanted frame, and a
frame-threaded decoder abandoned before the end of its stream has hung DataLoader workers
(PyAV-Org/PyAV#1849, pytorch/vision#9010; NVIDIA-TAO/tao-pytorch#109 moved to slice threads for
that reason).  ``benchmarks/bench_data.py`` measures both per codec.  torchcodec gets the same
``threads`` as its ``num_ffmpeg_threads`` (1 by default: one thread per video and loader worker).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "VideoDecodeError",
    "Video",
    "open_video",
    "read_frames",
    "count_frames",
    "list_frame_files",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "BACKENDS",
    "check_backend",
    "decode_device",
    "TORCHCODEC_MISSING",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv",
)
BACKENDS = ("pyav", "torchcodec")


class VideoDecodeError(RuntimeError):
    """A video or frame folder that cannot be read; the message names the path and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def _natural_key(name: str):
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of a frame folder in natural order (``img_2.jpg`` before ``img_10.jpg``)."""
    folder = Path(folder)
    try:
        names = [e.name for e in os.scandir(folder) if e.name.lower().endswith(IMAGE_EXTENSIONS)]
    except OSError as err:
        raise VideoDecodeError(folder, f"cannot list frame folder ({err.strerror or err})") from None
    return [folder / n for n in sorted(names, key=_natural_key)]


def _short_side_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(H, W) after resizing so that min(H, W) == short_side, keeping the aspect ratio."""
    if not short_side or min(height, width) == short_side:
        return height, width
    if height <= width:
        return short_side, max(1, int(round(width * short_side / height)))
    return max(1, int(round(height * short_side / width))), short_side


def _to_clip(frames: list[np.ndarray]) -> torch.Tensor:
    # (3, T, H, W) as a view of (T, H, W, 3) memory: no transposing copy here.  The crops read
    # it as channels-last (T, 3, H, W) frames, torch's fastest resampling layout.
    return torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)


def _as_indices(indices: Sequence[int] | np.ndarray, num_frames: int, path) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("read_frames needs at least one frame index")
    if idx.min() < 0:
        raise ValueError(f"negative frame index {int(idx.min())} for {path}")
    return idx


class Video:
    """An open video file or frame folder: ``num_frames``, ``frame_size`` and
    ``read(indices, short_side=None)``.  ``read`` returns a (3, T, H, W) uint8 tensor that may be
    a non-contiguous view of channels-last memory (call ``.contiguous()`` before ``.view``).

    Use :func:`open_video` (a context manager) rather than this class directly.
    """

    num_frames: int
    path: str

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(H, W) of the frames as stored, or None when unknown before decoding."""
        return None

    def read(self, indices, short_side: int | None = None) -> torch.Tensor:  # (3, T, H, W) uint8
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Video":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _FrameFolder(Video):
    def __init__(self, path: Path):
        self.path = str(path)
        self.files = list_frame_files(path)
        if not self.files:
            raise VideoDecodeError(path, "frame folder holds no JPEG/PNG images")
        self.num_frames = len(self.files)

    @property
    def frame_size(self):
        from PIL import Image

        try:
            with Image.open(self.files[0]) as img:
                return img.height, img.width
        except (OSError, ValueError, SyntaxError):
            return None

    def read(self, indices, short_side=None):
        idx = _as_indices(indices, self.num_frames, self.path)
        idx = np.minimum(idx, self.num_frames - 1)  # past the end: the last frame
        unique = [int(i) for i in np.unique(idx)]
        cache = None
        if short_side is None and all(self.files[i].suffix.lower() in (".jpg", ".jpeg") for i in unique):
            cache = self._read_jpegs(unique)
        if cache is None:
            cache = self._read_pil(unique, short_side)
        try:
            return _to_clip([cache[int(i)] for i in idx])
        except ValueError:
            raise VideoDecodeError(self.path, "frame images differ in size") from None

    def _read_jpegs(self, unique: list[int]) -> dict[int, np.ndarray] | None:
        """All frames with :func:`_jpeg_decoder` (libjpeg-turbo, same pixels as PIL, about 1.5x
        its speed).  None when there is no such decoder or a file fails: PIL then reads them and
        names a bad file."""
        decode = _jpeg_decoder()
        if decode is None:
            return None
        try:
            data = [torch.from_numpy(np.fromfile(self.files[i], dtype=np.uint8)) for i in unique]
            images = decode(data)  # [(3, H, W)]
        except (OSError, RuntimeError, ValueError):
            return None
        return {i: img.permute(1, 2, 0).numpy() for i, img in zip(unique, images)}

    def _read_pil(self, unique: list[int], short_side: int | None) -> dict[int, np.ndarray]:
        from PIL import Image

        cache: dict[int, np.ndarray] = {}
        size = None
        for i in unique:
            try:
                with Image.open(self.files[i]) as img:
                    if size is None:
                        size = _short_side_size(img.height, img.width, short_side)
                    if short_side and img.format == "JPEG":
                        img.draft("RGB", (size[1], size[0]))  # DCT-domain downscaling: far cheaper
                    img = img.convert("RGB")
                    if (img.height, img.width) != size:
                        img = img.resize((size[1], size[0]), Image.BILINEAR)
                    cache[i] = np.asarray(img)
            except (OSError, ValueError, SyntaxError) as err:
                raise VideoDecodeError(self.files[i], f"unreadable frame image ({err})") from None
        return cache


def _jpeg_decoders():
    """JPEG decoders of RGB (3, H, W) uint8 tensors from a list of encoded byte tensors, in the
    order of preference, by name.  Both use libjpeg-turbo and give PIL's pixels.  Measured with
    ``benchmarks/bench_data.py`` (JPEG row, 320x240 frames, one core): torchcodec 0.62-0.89 ms,
    torchvision 0.60-0.63 ms, PIL 1.01-1.40 ms per frame.  torchcodec's comes first as the
    fastest maintained one: torchvision 0.29 deprecated its image decoders in favour of
    torchcodec's (up to 30% faster here, it stays as the fallback; its warning is silenced)."""

    def torchcodec(data):
        from torchcodec.decoders import decode_jpeg  # torchcodec >= 0.16

        return decode_jpeg(data, mode="RGB")

    def torchvision(data):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg

            return decode_jpeg(data, mode=ImageReadMode.RGB)

    return {"torchcodec": torchcodec, "torchvision": torchvision}


_JPEG_DECODE: list = []  # [the chosen decoder or None], found on the first JPEG folder


def _jpeg_decoder():
    """The first decoder of :func:`_jpeg_decoders` that works here (None: PIL reads the JPEGs)."""
    if not _JPEG_DECODE:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("L", (1, 1), 128).save(buf, format="JPEG")  # a 1x1 grey JPEG: RGB out means it works
        probe = [torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)]
        chosen = None
        for decode in _jpeg_decoders().values():
            try:
                if decode(probe)[0].shape == (3, 1, 1):
                    chosen = decode
                    break
            except Exception:  # not installed, too old (no decode_jpeg), FFmpeg libraries missing
                continue
        _JPEG_DECODE.append(chosen)
    return _JPEG_DECODE[0]


def _av_error_types():
    import av

    return (av.FFmpegError, OSError, ValueError, EOFError, IndexError)


#: Keyword arguments of ``av.open`` for reading.  PyAV <= 18 decodes container metadata strictly
#: unless told ``metadata_errors="ignore"`` (a file with non-UTF-8 tags would not open); PyAV 19
#: removed the keyword and always decodes metadata leniently.  Found out on the first open.
_AV_OPEN_KWARGS: dict = {"metadata_errors": "ignore"}


def _av_open(path: str):
    """``av.open(path)`` for reading, on every PyAV from 12 to 19 (see :data:`_AV_OPEN_KWARGS`)."""
    import av

    global _AV_OPEN_KWARGS
    if _AV_OPEN_KWARGS:
        try:
            return av.open(path, **_AV_OPEN_KWARGS)
        except TypeError as err:
            if "metadata_errors" not in str(err):
                raise
            _AV_OPEN_KWARGS = {}  # PyAV >= 19: metadata is never strict, the keyword is gone
    return av.open(path)


class _PyAVVideo(Video):
    #: Seek again when the next wanted frame is this many frames ahead of the decoder.
    SEEK_GAP = 48

    def __init__(self, path: Path, threads: int = 1, num_frames: int | None = None, thread_type: str = "SLICE"):
        self.path = str(path)
        try:
            self.container = _av_open(self.path)
        except _av_error_types() as err:
            raise VideoDecodeError(path, f"not a readable video ({_reason(err)})") from None
        try:
            if not self.container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            self.stream = self.container.streams.video[0]
            # One thread per video unless asked: with a DataLoader worker per core, FFmpeg's
            # threads only add hand-over latency (benchmarks/bench_data.py, "threads").  More
            # threads are slice threads, never frame threads: this reader stops decoding at the
            # last wanted frame, and frame threading stopped before the end of the stream can
            # leave a loader worker hung (see the module docstring).
            self.stream.thread_type = "NONE" if threads == 1 else thread_type
            self.stream.thread_count = max(threads, 0)
            rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
            self.fps = Fraction(rate) if rate else None
            self.time_base = Fraction(self.stream.time_base) if self.stream.time_base else None
            self.start = self._first_pts()
            self.num_frames = int(self.stream.frames or 0)
            if self.num_frames <= 0 and num_frames:
                self.num_frames = int(num_frames)  # counted before (VideoDataset remembers it)
            if self.num_frames <= 0:
                self.num_frames = self._count_packets()
            if self.num_frames <= 0:
                self.num_frames = self._count_decoded()
            if self.num_frames <= 0:
                raise VideoDecodeError(path, "no decodable video frames")
        except VideoDecodeError:
            self.close()
            raise
        except _av_error_types() as err:
            self.close()
            raise VideoDecodeError(path, f"not a readable video ({_reason(err)})") from None

    def close(self):
        c = getattr(self, "container", None)
        if c is not None:
            c.close()
            self.container = None

    @property
    def frame_size(self):
        ctx = self.stream.codec_context
        return (ctx.height, ctx.width) if ctx.height and ctx.width else None

    def _first_pts(self) -> int:
        """The timestamp of frame 0: the first packet's (the keyframe shown first).

        Not always the stream's start time: AVI gives MPEG-4 B-frame streams a start time of 0
        and timestamps from 1 (one frame of reordering delay).
        """
        start = self.stream.start_time or 0
        for packet in self.container.demux(self.stream):
            if packet.size > 0:
                start = packet.pts if packet.pts is not None else start
                break
        self.container.seek(0)
        return start

    def _count_packets(self) -> int:
        self.container.seek(0)
        n = sum(1 for p in self.container.demux(self.stream) if p.size > 0)
        self.container.seek(0)
        return n

    def _count_decoded(self) -> int:
        """Frames that decode from the start up to the first undecodable packet."""
        self.container.seek(0)
        n = 0
        try:
            for _ in self._frames_from_here(None):
                n += 1
        except _av_error_types():
            if n == 0:
                raise
        self.container.seek(0)
        return n

    def _index_of(self, pts: int | None) -> int | None:
        """The display index of a frame or packet timestamp (None: no usable timestamp)."""
        if pts is None or not self.fps or not self.time_base:
            return None
        return int(round(float((pts - self.start) * self.time_base * self.fps)))

    def _pts_of(self, index: int) -> int:
        return int(math.floor(index / self.fps / self.time_base)) + self.start

    def _frames_from_here(self, wanted: set[int] | None):
        """Decoded frames from the demuxer's position on, in display order.

        With ``wanted`` (display indices) a packet whose timestamp is not wanted is decoded with
        ``skip_frame="NONREF"``: FFmpeg drops it if no other frame refers to it (B-frames,
        most of MPEG-4's), a third to a half of the frames between TSN windows.  Reference
        frames are always decoded, so the wanted frames come out bit-exact.
        """
        ctx = self.stream.codec_context
        skipping = False
        try:
            for packet in self.container.demux(self.stream):
                if wanted is not None:
                    i = self._index_of(packet.pts)
                    skip = i is not None and i not in wanted
                    if skip != skipping:
                        ctx.skip_frame, skipping = ("NONREF" if skip else "DEFAULT"), skip
                yield from ctx.decode(packet)  # an empty packet at the end flushes the decoder
        finally:
            if skipping:
                ctx.skip_frame = "DEFAULT"

    def _decode_seeking(self, wanted: np.ndarray, convert) -> dict[int, np.ndarray] | None:
        """Frames by timestamp with keyframe seeks; None when the timestamps cannot be trusted.

        Seeks to the keyframe before the first wanted frame (and again before a wanted frame
        more than ``SEEK_GAP`` frames ahead), skips unreferenced frames that are not wanted and
        stops at the last wanted frame.
        """
        if not self.fps or not self.time_base:
            return None
        wanted_set = set(int(i) for i in wanted)
        out: dict[int, np.ndarray] = {}
        pos = -1  # index of the last decoded frame
        k = 0
        while k < len(wanted):
            target = int(wanted[k])
            if target - pos > self.SEEK_GAP or pos < 0:
                self.container.seek(self._pts_of(target), stream=self.stream, backward=True)
                pos, first = -1, True
            else:
                first = False
            for frame in self._frames_from_here(wanted_set):
                i = self._index_of(frame.pts)
                if i is None or i <= pos or (first and i > target):
                    return None  # no timestamps, not increasing, or the seek overshot
                first, pos = False, i
                if wanted[k] < i:
                    return None  # a wanted frame has no timestamp of its own (dropped/VFR)
                if wanted[k] == i:
                    out[i] = convert(frame)
                    k += 1
                    if k == len(wanted):
                        return out  # the last wanted frame: stop decoding here
                    if wanted[k] - pos > self.SEEK_GAP:
                        break
            else:
                return out  # end of stream: the rest are past the end
        return out

    def _decode_counting(self, wanted: np.ndarray, convert) -> dict[int, np.ndarray]:
        """Exact fallback: decode every frame from the first one and count.

        Stops at the first undecodable packet (a truncated file): the frames before it are
        returned and the caller reports the missing ones.
        """
        self.container.seek(0)
        out: dict[int, np.ndarray] = {}
        last = int(wanted[-1])
        wanted_set = set(int(i) for i in wanted)
        frames = self._frames_from_here(None)
        i = -1
        while i < last:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except _av_error_types():
                if not out and i < 0:
                    raise
                break
            i += 1
            if i in wanted_set:
                out[i] = convert(frame)
        return out

    def read(self, indices, short_side=None):
        idx = _as_indices(indices, self.num_frames, self.path)
        ctx = self.stream.codec_context
        h, w = _short_side_size(ctx.height, ctx.width, short_side) if ctx.height else (None, None)

        from av.video.reformatter import VideoReformatter

        # swscale converts any pixel format (gray, alpha, 10-bit, ...) to RGB and resizes.  One
        # reformatter for the whole read keeps its scaling context: 10-20x faster than
        # frame.to_ndarray(width=..., height=...), which sets up a new context for every frame.
        reformatter = VideoReformatter()

        def convert(frame):
            if h is None:
                return reformatter.reformat(frame, format="rgb24").to_ndarray()
            return reformatter.reformat(frame, width=w, height=h, format="rgb24", interpolation="BILINEAR").to_ndarray()

        wanted = np.unique(idx)
        try:
            got = self._decode_seeking(wanted, convert)
            if got is None or len(got) < len(wanted):
                # Timestamps unusable, or frames missing: count from the start to be exact.
                got = self._decode_counting(wanted, convert)
        except _av_error_types() as err:
            try:
                got = self._decode_counting(wanted, convert)
            except _av_error_types():
                raise VideoDecodeError(self.path, f"decoding failed ({_reason(err)})") from None
        if not got:
            raise VideoDecodeError(self.path, "no decodable video frames")
        decoded = max(got) + 1
        missing = [int(i) for i in wanted if int(i) not in got]
        if missing:
            # Past the last decodable frame: tolerate a header that is off by a little.
            short = min(self.num_frames, int(wanted[-1]) + 1) - decoded
            if short > max(2, self.num_frames // 20) or any(i < decoded for i in missing):
                raise VideoDecodeError(
                    self.path,
                    f"truncated or corrupt: the container announces {self.num_frames} frames "
                    f"but frame {missing[0]} does not decode",
                )
            for i in missing:
                got[i] = got[decoded - 1]
        return _to_clip([got[int(i)] for i in idx])


#: The one-line advice when torchcodec cannot be imported (missing, or FFmpeg's libraries absent).
TORCHCODEC_MISSING = (
    "backend 'torchcodec' is not installed or cannot load FFmpeg: pip install -e '.[torchcodec]' "
    "(it also needs FFmpeg's shared libraries, e.g. Debian's ffmpeg package)"
)


def _torchcodec_decoders():
    """``torchcodec.decoders``, or ValueError with :data:`TORCHCODEC_MISSING` (one line)."""
    try:
        import torchcodec.decoders as decoders
    except (ImportError, OSError, RuntimeError) as err:  # RuntimeError: its FFmpeg libraries did not load
        raise ValueError(f"{TORCHCODEC_MISSING}; {_reason(err)[:120]}") from None
    return decoders


def decode_device(device: str | torch.device = "cpu") -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a torch.device; ValueError (one line) for anything else."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"decode_device: expected cpu, cuda or cuda:N, got {device!r}")
    return dev


def check_backend(backend: str, device: str | torch.device = "cpu") -> None:
    """Raise ValueError (one line) unless ``backend`` can decode here on ``device``.

    Unknown names, torchcodec not installed (with the install command), a CUDA device with
    PyAV (which decodes on the CPU only) or on a machine without CUDA.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown decoding backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    dev = decode_device(device)
    if backend == "torchcodec":
        _torchcodec_decoders()
    if dev.type == "cuda":
        if backend != "torchcodec":
            raise ValueError(f"decode_device {str(device)!r} needs backend 'torchcodec' (PyAV decodes on the CPU)")
        if not torch.cuda.is_available():
            raise ValueError(f"decode_device {str(device)!r}: CUDA is not available on this machine")


def _tc_reason(err: BaseException) -> str:
    """torchcodec's message without its C++ source location (``"SingleStreamDecoder, X.cpp:41, "``)."""
    return re.sub(r"^.*?\.cpp:\d+,\s*", "", _reason(err))


#: Videos of this process whose torchcodec frames could not be trusted: opened with PyAV directly.
_PYAV_ONLY: set[str] = set()


class _TorchCodecVideo(Video):
    """A video decoded by torchcodec (FFmpeg's shared libraries; on the CPU or on NVDEC).

    The same frames as the PyAV reader, or the PyAV reader itself: torchcodec maps a frame
    index to a timestamp (``seek_mode="approximate"``: start + index / fps; the header's frame
    count, else the packets counted with ``seek_mode="exact"``), so every read checks that the
    decoded frames carry the timestamps of the wanted indices, counted from the timestamp of
    frame 0 as decoded.  When they do not (MPEG-4 part 2 in AVI with B-frames: the decoded
    timestamps start one frame after the stream's, and after a seek torchcodec returns the frame
    before the wanted one, in both seek modes; variable frame rate), or when torchcodec fails
    (a truncated file, a header that announces more frames than there are), this video is read
    by the PyAV reader from then on, which gives its frames, its tolerance for headers that are
    off by a frame or two, and its "truncated" errors.  Such a video is remembered (per process)
    and opened with PyAV alone after.  Indices past the end read the last frame.

    Frames come back on the CPU (uint8, channels-last like PyAV's): with ``device="cuda"``
    NVDEC decodes and the short-side resize runs on the GPU, then the frames are copied back,
    so the crops, the DataLoader's collation and pinned-memory copies work unchanged.
    """

    def __init__(self, path: Path, threads: int = 1, num_frames: int | None = None,
                 device: str | torch.device = "cpu"):
        decoders = _torchcodec_decoders()
        self.path = str(path)
        self.device = decode_device(device)
        self.threads = threads
        self.pyav: _PyAVVideo | None = None  # set when torchcodec's frames cannot be trusted
        self.fallback_reason: str | None = None
        self._pts0: float | None = None  # timestamp of frame 0 as decoded (first read)
        self.decoder = None
        if self.path in _PYAV_ONLY:
            self._use_pyav("torchcodec's frames were not those of PyAV before")
            self.num_frames, self.meta = self.pyav.num_frames, None
            return

        def decoder(seek_mode: str):
            return decoders.VideoDecoder(self.path, seek_mode=seek_mode, dimension_order="NHWC",
                                         num_ffmpeg_threads=max(threads, 0), device=str(self.device))

        try:
            # "approximate": no scan of the whole file at opening, and the same frames as "exact"
            # on H.264, HEVC and MPEG-4 (tests/test_data_torchcodec.py); timestamps are checked.
            self.decoder = decoder("approximate")
            meta = self.decoder.metadata
            n = meta.num_frames_from_header or num_frames
            if not n:  # no count in the header (MKV, WebM): count the packets, as the PyAV reader does
                self.decoder = decoder("exact")
                meta = self.decoder.metadata
                n = meta.num_frames_from_content
        except Exception as err:  # torchcodec raises plain RuntimeError/ValueError
            raise VideoDecodeError(path, f"not a readable video ({_tc_reason(err)})") from None
        self.meta = meta
        self.num_frames = int(n or 0)
        if self.num_frames <= 0:
            raise VideoDecodeError(path, "no decodable video frames")

    @property
    def frame_size(self):
        if self.meta is None:
            return self.pyav.frame_size
        m = self.meta
        return (m.height, m.width) if m.height and m.width else None

    def close(self):
        self.decoder = None
        if self.pyav is not None:
            self.pyav.close()

    def _use_pyav(self, reason: str) -> _PyAVVideo:
        if self.pyav is None:
            self.fallback_reason = reason
            _PYAV_ONLY.add(self.path)
            self.pyav = _PyAVVideo(Path(self.path), threads=self.threads, num_frames=getattr(self, "num_frames", None))
        return self.pyav

    def _decode(self, idx: np.ndarray):
        """(frames (T, H, W, 3) of ``idx`` on the decoding device, None) or (None, why not).

        torchcodec takes the indices in any order with repeats (it sorts them and decodes each
        frame once); frame 0 is added on the first read, for its timestamp.
        """
        first = self._pts0 is None
        ask = np.concatenate([[0], idx]) if first else idx
        try:
            batch = self.decoder.get_frames_at(indices=ask.tolist())
        except Exception as err:
            return None, f"torchcodec failed: {_tc_reason(err)}"
        fps = self.meta.average_fps
        pts = batch.pts_seconds.double().cpu().numpy()
        if first:
            self._pts0 = float(pts[0])
        if not fps or not np.array_equal(np.round((pts - self._pts0) * fps).astype(np.int64), ask):
            return None, "torchcodec's timestamps do not match the frame indices"
        return (batch.data[1:] if first else batch.data), None

    def read(self, indices, short_side=None):
        # past the end: the last frame (also when PyAV reads, whose truncation checks stay)
        idx = np.minimum(_as_indices(indices, self.num_frames, self.path), self.num_frames - 1)
        if self.pyav is None:
            frames, why = self._decode(idx)
            if frames is not None:
                return self._finish(frames, short_side)
            self._use_pyav(why)
        return self.pyav.read(idx, short_side=short_side)

    @staticmethod
    def _finish(frames: torch.Tensor, short_side: int | None) -> torch.Tensor:
        """(T, H, W, 3) uint8 on any device -> (3, T, H', W') on the CPU, resized on the device."""
        h, w = _short_side_size(frames.shape[1], frames.shape[2], short_side)
        if (h, w) != tuple(frames.shape[1:3]):
            import torch.nn.functional as F

            x = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(h, w), mode="bilinear", antialias=True)
            frames = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return frames.cpu().contiguous().permute(3, 0, 1, 2)


def _reason(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err).strip() or type(err).__name__
    text = str(text).splitlines()[0]
    return text[:200]


def open_video(
    source: str | os.PathLike,
    backend: str = "pyav",
    *,
    threads: int = 1,
    num_frames: int | None = None,
    device: str | torch.device = "cpu",
) -> Video:
    """Open a video file or a frame folder; use as ``with open_video(p) as v: v.read(idx)``.

    ``backend``: ``"pyav"`` or ``"torchcodec"`` (video files; frame folders read the same way
    with both).  ``threads``: FFmpeg decoding threads (1: none, the fastest with a DataLoader
    worker per core; 0: FFmpeg's choice).  ``num_frames``: the frame count when it is already
    known, used only when the container header has none (MKV, WebM), to skip counting the
    packets again.  ``device``: ``"cuda"`` (or ``"cuda:N"``) decodes on NVDEC with torchcodec;
    frames always come back on the CPU.

    Raises :class:`VideoDecodeError` (naming the path) for a missing path, an empty file, a
    file that is not a video, or a folder without frame images; ValueError (one line) when the
    backend or device cannot be used here (see :func:`check_backend`).
    """
    check_backend(backend, device)
    path = Path(source)
    if path.is_dir():
        return _FrameFolder(path)
    if not path.exists():
        raise VideoDecodeError(path, "missing: no such file or folder")
    try:
        if path.stat().st_size == 0:
            raise VideoDecodeError(path, "empty file (0 bytes)")
    except OSError as err:
        raise VideoDecodeError(path, f"cannot stat ({err.strerror or err})") from None
    if backend == "torchcodec":
        return _TorchCodecVideo(path, threads=threads, num_frames=num_frames, device=device)
    return _PyAVVideo(path, threads=threads, num_frames=num_frames)


def read_frames(
    source: str | os.PathLike,
    indices: Sequence[int] | np.ndarray,
    *,
    short_side: int | None = None,
    backend: str = "pyav",
    threads: int = 1,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The frames ``indices`` (0-based, any order, repeats allowed) of a video or frame folder.

    Returns a ``(3, T, H, W)`` uint8 RGB tensor, ``T = len(indices)``.  ``short_side`` resizes
    every frame (in the decoder, so it is cheap) so that ``min(H, W) == short_side``.
    Indices past the end read the last frame for frame folders; for video files see the module
    docstring (a few frames of header slack, otherwise a "truncated" error).
    """
    with open_video(source, backend, threads=threads, device=device) as video:
        return video.read(indices, short_side=short_side).contiguous()


def count_frames(source: str | os.PathLike, *, exact: bool = False, backend: str = "pyav") -> int:
    """Frames of a video (from its header, else by counting packets) or images in a frame folder.

    ``exact=True`` decodes the whole video and counts the frames that really decode (a check
    for truncated or corrupt files; with PyAV whatever the backend, whose frames are the same);
    a decoding error then raises :class:`VideoDecodeError`.
    """
    with open_video(source, backend) as video:
        if not exact or isinstance(video, _FrameFolder):
            return video.num_frames
    with _PyAVVideo(Path(source)) as video:
        try:
            n = video._count_decoded()
        except _av_error_types() as err:
            raise VideoDecodeError(video.path, f"decoding failed ({_reason(err)})") from None
        if n == 0:
            raise VideoDecodeError(video.path, "no decodable video frames")
        return n
