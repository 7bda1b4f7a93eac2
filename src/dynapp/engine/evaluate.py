"""Evaluation: top-1, top-5 and mean class accuracy, clip level and video level, across processes.

Top-5 is reported only with more than 5 classes (with 5 or fewer it is always 100).  The video
level also carries the accuracy of each class (``per_class``, by class name) and the result the
confusion matrix of the videos (``confusion``: row = true class, column = predicted class).

Clip level: every view (temporal clip x spatial crop) is scored on its own.  Video level: the
softmax scores of all views of a video are averaged, then scored (the multi-view protocol of
Feichtenhofer et al. that the paper follows, Appendix A).  The two are reported apart.

Across processes, each process scores the items of an ``ExactShardSampler`` (every item exactly
once), the per-item scores are gathered and de-duplicated by item index before the per-video
average.  UCF101 and HMDB51 report the mean over the three official splits (``mean_over_splits``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from dynapp.data.dataset import worker_start_method
from dynapp.engine.distributed import ExactShardSampler, all_gather_objects
from dynapp.engine.preempt import ignore_stop_signals

__all__ = [
    "IndexedDataset",
    "topk_accuracy",
    "mean_class_accuracy",
    "per_class_accuracy",
    "confusion_matrix",
    "classification_metrics",
    "average_views",
    "drop_replacements",
    "collect_scores",
    "evaluate",
    "mean_over_splits",
    "write_json",
]


class IndexedDataset(Dataset):
    """Wrap a dataset so that item i is ``(i, *dataset[i])`` (for de-duplication)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return (i, *self.dataset[i])


def topk_accuracy(scores: Tensor, labels: Tensor, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores.  scores (N, K), labels (N,)."""
    if scores.shape[0] == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices  # (N, k)
    return float((top == labels[:, None]).any(dim=1).float().mean())


def mean_class_accuracy(scores: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy per class, averaged over the classes present in ``labels``."""
    if scores.shape[0] == 0:
        return float("nan")
    correct = (scores.argmax(1) == labels).float()
    classes = labels.unique()
    return float(torch.stack([correct[labels == c].mean() for c in classes]).mean())


def confusion_matrix(scores: Tensor, labels: Tensor) -> Tensor:
    """(K, K) int64 counts: row = true class, column = predicted (argmax) class."""
    k = scores.shape[1]
    counts = torch.zeros(k * k, dtype=torch.int64)
    if scores.shape[0]:
        counts.index_add_(0, labels.long() * k + scores.argmax(1), torch.ones_like(labels, dtype=torch.int64))
    return counts.view(k, k)


def per_class_accuracy(scores: Tensor, labels: Tensor, classes: Sequence[str] | None = None) -> dict[str, float | None]:
    """Top-1 accuracy (percent) of each class by name (``classes``, default its index), None for a
    class with no video."""
    matrix = confusion_matrix(scores, labels)
    names = list(classes) if classes is not None and len(classes) == matrix.shape[0] else [
        str(i) for i in range(matrix.shape[0])]
    totals = matrix.sum(1)
    return {name: (100.0 * float(matrix[i, i]) / float(totals[i]) if totals[i] else None)
            for i, name in enumerate(names)}


def classification_metrics(scores: Tensor, labels: Tensor) -> dict[str, float]:
    """``{"top1", "top5", "mean_class", "count"}`` (accuracies in percent); no ``top5`` with 5
    classes or fewer (it would always be 100)."""
    out = {"top1": 100.0 * topk_accuracy(scores, labels, 1)}
    if scores.shape[1] > 5:
        out["top5"] = 100.0 * topk_accuracy(scores, labels, 5)
    out.update(mean_class=100.0 * mean_class_accuracy(scores, labels), count=int(scores.shape[0]))
    return out


def average_views(item_ids: Tensor, video_ids: Tensor, labels: Tensor, probs: Tensor):
    """De-duplicate items by id, then average the view probabilities of each video.

    Returns (clip_probs, clip_labels, video_probs, video_labels, video_ids), sorted by id.
    Raises ValueError if two views of one video carry different labels.
    """
    order = torch.argsort(item_ids, stable=True)
    item_ids, video_ids, labels, probs = item_ids[order], video_ids[order], labels[order], probs[order]
    keep = torch.ones_like(item_ids, dtype=torch.bool)
    keep[1:] = item_ids[1:] != item_ids[:-1]
    item_ids, video_ids, labels, probs = item_ids[keep], video_ids[keep], labels[keep], probs[keep]
    videos, inverse = torch.unique(video_ids, return_inverse=True)
    sums = torch.zeros(len(videos), probs.shape[1], dtype=torch.float64).index_add_(0, inverse, probs.double())
    counts = torch.zeros(len(videos), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(inverse, dtype=torch.float64))
    video_labels = torch.full((len(videos),), -1, dtype=labels.dtype)
    video_labels[inverse] = labels
    if not torch.equal(video_labels[inverse], labels):
        raise ValueError("views of the same video carry different labels")
    return probs, labels, sums / counts[:, None], video_labels, videos


@torch.no_grad()
def collect_scores(model: torch.nn.Module, loader: Iterable, *, device: torch.device, amp: bool = False):
    """Run ``model`` over ``loader`` of ``(item_id, clip, label, video_id)``; softmax probabilities.

    Returns CPU tensors (item_ids, video_ids, labels, probs) of this process only.
    """
    model.eval()
    ids, vids, labs, probs = [], [], [], []
    for item_id, clip, label, video_id in loader:
        clip = clip.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            logits = model(clip).logits
        probs.append(logits.float().softmax(1).cpu())
        ids.append(torch.as_tensor(item_id))
        vids.append(torch.as_tensor(video_id))
        labs.append(torch.as_tensor(label))
    if not probs:
        return (torch.zeros(0, dtype=torch.long),) * 3 + (torch.zeros(0, 0),)
    return torch.cat(ids), torch.cat(vids), torch.cat(labs), torch.cat(probs)


def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    *,
    device: torch.device,
    batch_size: int = 8,
    num_workers: int = 0,
    amp: bool = False,
) -> dict:
    """Clip-level and video-level metrics of ``model`` on ``dataset`` (items ``(clip, label, video)``).

    Works for one process or under ``torchrun``: every process scores its exact shard and every
    process returns the same result dict ``{"clip": {...}, "video": {...}}``.
    """
    # its own generator: evaluating in the middle of a run must not draw from the global RNG
    # (dropout of the steps after it), or a run resumed past an evaluation would diverge
    loader = DataLoader(IndexedDataset(dataset), batch_size=batch_size, sampler=ExactShardSampler(dataset),
                        num_workers=num_workers, pin_memory=device.type == "cuda", generator=torch.Generator(),
                        worker_init_fn=ignore_stop_signals,
                        multiprocessing_context=worker_start_method(dataset, num_workers))
    local = collect_scores(model, loader, device=device, amp=amp)
    parts = all_gather_objects(local)
    parts = [p for p in parts if p[3].numel() > 0]
    if not parts:
        raise ValueError("the evaluation dataset is empty")
    item_ids, video_ids, labels, probs = (torch.cat([p[i] for p in parts]) for i in range(4))
    item_ids, video_ids, labels, probs = drop_replacements(dataset, item_ids, video_ids, labels, probs)
    clip_p, clip_l, video_p, video_l, _ = average_views(item_ids, video_ids, labels, probs)
    classes = getattr(dataset, "classes", None)
    video = {**classification_metrics(video_p, video_l), "per_class": per_class_accuracy(video_p, video_l, classes)}
    result = {"clip": classification_metrics(clip_p, clip_l), "video": video,
              "confusion": confusion_matrix(video_p, video_l).tolist()}
    if hasattr(dataset, "bad_items"):  # every process's skipped videos (each found its own)
        skipped = {str(b.path): b.reason for part in all_gather_objects(dataset.bad_items()) for b in part}
        result["skipped_videos"] = [{"path": p, "reason": r} for p, r in sorted(skipped.items())]
    return result


def drop_replacements(dataset: Dataset, item_ids: Tensor, video_ids: Tensor, labels: Tensor, probs: Tensor):
    """Leave out the items a dataset answered with another video's view (it does so for an
    unreadable video, ``dynapp.data.dataset``): that view is already scored as its own video's,
    and counting it again would make more clips than the readable videos have."""
    if not hasattr(dataset, "video_index"):
        return item_ids, video_ids, labels, probs
    own = torch.tensor([dataset.video_index(int(i)) for i in item_ids], dtype=video_ids.dtype)
    keep = own == video_ids
    return item_ids[keep], video_ids[keep], labels[keep], probs[keep]


def mean_over_splits(results: Sequence[dict]) -> dict:
    """The mean of per-split result dicts (UCF101/HMDB51 report the mean over the 3 splits)."""
    if not results:
        raise ValueError("no split results to average")
    out: dict = {}
    for level in ("clip", "video"):
        keys = [k for k in ("top1", "top5", "mean_class") if all(k in r[level] for r in results)]
        out[level] = {k: sum(r[level][k] for r in results) / len(results) for k in keys}
        out[level]["count"] = sum(r[level]["count"] for r in results)
    out["splits"] = len(results)
    return out


def write_json(result: dict, path: str | Path) -> Path:
    """Write a result dict as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return path
