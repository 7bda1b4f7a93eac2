"""Video data: decoding, dataset readers, TSN/dense sampling, transforms and the clip Dataset.

Public API::

    read_frames(source, indices, *, short_side=None, backend="pyav", device="cpu") -> (3, T, H, W) uint8
    open_video(source, backend="pyav", *, threads=1, device="cpu") -> Video (.num_frames, .read(indices, short_side=None))
        (backend "pyav" or "torchcodec": the same frames; device "cuda": NVDEC with torchcodec)
    DATASETS: {"ucf101", "hmdb51", "kinetics", "minikinetics", "ssv1", "list", "folder", "synthetic", "random"}
        -> DatasetEntry (its reader or generator, default flip and sampling; dynapp.data.catalog)
    read_annotations(name, root, *, split=1, train=True) -> Annotations(items, classes)
    tsn_indices / dense_indices / sample_indices: frame indices of a clip (pure numpy)
    VideoDataset, build_dataset(name, root, *, split=1, train, segments, frames, sampling, crop_size, ...)
        (generated: "synthetic", same-scene action clips, dynapp.data.synthetic; "random", dynapp.data.noise)
    check_dataset(paths, *, min_frames, quick=False, workers=0) -> [CheckResult]
"""

from dynapp.data.annotations import Annotation, Annotations
from dynapp.data.catalog import DATASETS, DatasetEntry, read_annotations
from dynapp.data.check import CheckResult, check_dataset, check_video
from dynapp.data.dataset import BadItem, BadVideoWarning, VideoDataset, build_dataset
from dynapp.data.decode import VideoDecodeError, count_frames, open_video, read_frames
from dynapp.data.sampling import SAMPLERS, dense_indices, sample_indices, tsn_indices

__all__ = [
    "DATASETS",
    "DatasetEntry",
    "Annotation",
    "Annotations",
    "read_annotations",
    "CheckResult",
    "check_dataset",
    "check_video",
    "BadItem",
    "BadVideoWarning",
    "VideoDataset",
    "build_dataset",
    "VideoDecodeError",
    "count_frames",
    "open_video",
    "read_frames",
    "SAMPLERS",
    "dense_indices",
    "sample_indices",
    "tsn_indices",
]
