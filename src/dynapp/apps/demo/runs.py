"""The demo's runs: its generated clips, one training run with ``dynapp train``'s loop, and its evaluation."""

from __future__ import annotations

import csv
import math
import statistics
import time
from pathlib import Path

import torch

from dynapp.apps.demo.config import DEFAULT_JOINT, DemoConfig, data_kwargs, run_config
from dynapp.config import RunConfig


def build_demo_data(cfg: DemoConfig, seed: int):
    """{setting: training set}, and the shared test set (uncorrelated scenes)."""
    from dynapp.data.synthetic import SyntheticActions

    kw = data_kwargs(cfg, seed)
    train = {s: SyntheticActions(num_videos=cfg.num_train, train=True, scene_bias=cfg.scene_bias if s == "biased" else 0.0,
                                 **kw) for s in cfg.settings}
    test = SyntheticActions(num_videos=cfg.num_test, train=False, **kw)
    return train, test


def build_demo_val(cfg: DemoConfig, seed: int):
    """The validation clips of seed ``seed``: laid out like the test clips (uncorrelated scenes),
    drawn from their own random stream (``SyntheticActions(validation=True)``)."""
    from dynapp.data.synthetic import SyntheticActions

    return SyntheticActions(num_videos=cfg.num_val, train=False, validation=True, **data_kwargs(cfg, seed))


_DATA: dict[str, tuple] = {}  # the clips of the last seeds this process used (their cache holds the rendered clips)
_DATA_KEEP = 2


def demo_data(cfg: DemoConfig, seed: int) -> tuple[dict, object, object]:
    """``({setting: training set}, validation set, test set)`` of seed ``seed``, built once per
    process and benchmark (the last :data:`_DATA_KEEP` are kept, with the clips they rendered)."""
    key = repr((data_kwargs(cfg, seed), cfg.num_train, cfg.num_val, cfg.num_test, cfg.scene_bias, tuple(cfg.settings)))
    if key not in _DATA:
        while len(_DATA) >= _DATA_KEEP:
            _DATA.pop(next(iter(_DATA)))
        train_sets, test_set = build_demo_data(cfg, seed)
        _DATA[key] = (train_sets, build_demo_val(cfg, seed), test_set)
    return _DATA[key]


def _read_log(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in r.items()} for r in csv.DictReader(f)]


@torch.no_grad()
def _predict(model, dataset, batch_size: int = 64):
    """Logits-argmax predictions, labels and (pwtp) per-clip ENoPR on ``dataset``."""
    model.eval()
    preds, labels, enopr = [], [], []
    for i in range(0, len(dataset), batch_size):
        items = [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]
        x = torch.stack([it[0] for it in items])
        out = model(x)
        preds.append(out.logits.argmax(1))
        labels.append(torch.tensor([it[1] for it in items]))
        if out.aux_loss is not None:
            enopr.append(float(out.aux_loss) * len(items))
    n = len(dataset)
    return torch.cat(preds), torch.cat(labels), (sum(enopr) / n if enopr else None)


def _accuracy(model, dataset) -> float:
    pred, label, _ = _predict(model, dataset)
    return 100.0 * float((pred == label).float().mean())


@torch.no_grad()
def input_leakage(model, rep: str, dataset, segments: int, frames: int, count: int = 64) -> dict:
    """Static share and mean weight sum of the input on ``count`` test clips.

    PWTP (both inputs): its learned weights (:func:`dynapp.leakage.static_leakage`, which applies
    the module's ``static`` option).  The fixed inputs are
    linear temporal filters too: RGB is a one-hot weight on the centre frame (weight sum 1), the
    dynamic image's rank-pooling weights and each RGB difference sum to 0 (no leak).
    """
    from dynapp.leakage import leakage_from_weights, static_leakage
    from dynapp.representations import rank_pool_weights

    x = torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])  # (N, C, S*T, H, W)
    n, c, _, h, w = x.shape
    seg = x.reshape(n, c, segments, frames, h, w).transpose(1, 2).reshape(n * segments, c, frames, h, w)
    if rep in ("pwtp", "pwtp_remove"):
        out = static_leakage(model.representation.pwtp.eval(), x)
    elif rep == "rgb":
        wt = torch.zeros(frames)
        wt[frames // 2] = 1.0
        out = leakage_from_weights(wt.view(1, frames, 1, 1).expand(n * segments, frames, h, w), seg)
    elif rep == "dynamic_image":
        a = rank_pool_weights(frames, dtype=torch.float32)
        a = a / (a.abs().sum() / 2)
        out = leakage_from_weights(a.view(1, frames, 1, 1).expand(n * segments, frames, h, w), seg)
    else:  # rgb_diff: every channel is x[t+1] - x[t], weights (-1, +1)
        return {"static_share": 0.0, "weight_sum": 0.0}
    share, wsum = float(out.static_share.mean()), float(out.weight_sum.mean())
    # float32 round-off of weights that sum to 0 exactly: print 0, not -0.0000
    return {"static_share": share if abs(share) > 1e-6 else 0.0, "weight_sum": wsum if abs(wsum) > 1e-6 else 0.0}


def fit(model, train_set, run: RunConfig) -> None:
    """Train ``model`` with the project's loop and the sections of ``run`` (the demo's one call of
    ``dynapp.engine.train.train``)."""
    from dynapp.engine.train import train

    train(model, train_set, None, seed=run.seed, num_workers=run.data.num_workers, optim=run.optim, joint=run.joint,
          log=run.log, checkpoint=run.checkpoint)


def train_and_evaluate(cfg: DemoConfig, rep: str, train_set, test_set, *, out_dir: Path, seed: int,
                       strategy: str = DEFAULT_JOINT[0], alpha: float = DEFAULT_JOINT[1],
                       normalize: str = DEFAULT_JOINT[2], backbone_grad: str = DEFAULT_JOINT[3],
                       rank: int | None = None, val_set=None, pwtp: dict | None = None,
                       enopr_weight: float = 1.0, head_std: float | None = None) -> dict:
    """Train ``cfg.backbone`` on demo input ``rep`` with the project's training loop, then evaluate it
    on ``test_set`` (``accuracy``) and, if given, on ``val_set`` (``val_accuracy``, for choices).

    ``pwtp``: more keyword arguments of a PWTP input (``kernel_size``, ``stride``, ``pixels``);
    ``enopr_weight``: ``joint.enopr_weight``; ``head_std``: the classifier's initial std (None:
    the model's 0.001).  The three are factors of the joint-training study (docs/joint.md).
    """
    from dynapp.apps.flops import model_flops
    from dynapp.model import build_model

    run = run_config(cfg, rep, out_dir=out_dir, seed=seed, strategy=strategy, alpha=alpha, normalize=normalize,
                     backbone_grad=backbone_grad, rank=rank, pwtp=pwtp, enopr_weight=enopr_weight)
    d, m = run.data, run.model
    torch.manual_seed(seed)
    model = build_model(representation=m.representation, backbone=m.backbone, num_classes=d.num_classes,
                        segments=d.segments, frames=d.frames, dropout=m.dropout,
                        representation_kwargs=m.representation_kwargs, backbone_kwargs=m.backbone_kwargs)
    if head_std is not None:
        torch.nn.init.normal_(model.head.weight, std=head_std)
    out_dir.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    fit(model, train_set, run)
    train_s = time.perf_counter() - tic
    pred, label, enopr = _predict(model, test_set)
    k = cfg.num_classes
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((label, pred), torch.ones_like(label), accumulate=True)
    cost = model_flops(representation=m.representation, backbone=m.backbone, num_classes=k, segments=d.segments,
                       frames=d.frames, crop=d.crop_size, representation_kwargs=m.representation_kwargs,
                       backbone_kwargs=m.backbone_kwargs)
    log = _read_log(out_dir / "train_log.csv")
    alphas = [r["alpha"] for r in log if not math.isnan(r.get("alpha", math.nan))]
    tail = alphas[-max(1, len(alphas) // 10):]  # the last tenth of training
    da = m.representation == "pwtp"
    result = {
        "input": rep, "backbone": cfg.backbone, "accuracy": 100.0 * float((pred == label).float().mean()),
        "enopr": enopr, "params": cost.params, "gflops": cost.gflops, "train_s": train_s, "steps": len(log),
        "confusion": confusion.tolist(), "log": log, "strategy": strategy if da else None,
        "normalize": normalize if da and strategy in ("mgda", "mgda_ub") else None,
        "joint": (strategy, alpha, normalize, backbone_grad) if da else None,
        "alpha_mean": statistics.fmean(alphas) if da and alphas else None,
        "alpha_end": statistics.fmean(tail) if da and alphas else None,
        "val_accuracy": _accuracy(model, val_set) if val_set is not None else None,
    }
    result.update(input_leakage(model, rep, test_set, cfg.segments, cfg.frames))
    result["_model"] = model
    return result
