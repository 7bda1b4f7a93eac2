"""``dynapp demo``: the whole method on one CPU, on generated same-scene actions.

It generates :mod:`dynapp.data.synthetic` clips (the class is the motion; scenes are shared by all
classes), trains the same temporal backbone (``small_tsm`` by default: a small 2D CNN with TSM's
temporal shift, the paper's protocol of a temporal backbone over the S representation frames;
``--backbone small2d`` or ``small3d``) on five inputs -- one RGB frame per segment, RGB
differences, dynamic images, dynamic appearance (PWTP trained jointly with MGDA, by the project's
own training loop ``dynapp.engine.train.train``) and leak-free dynamic appearance
(``PWTP(static="remove")``: each pixel's temporal weights sum to zero) -- in two settings:

* **unbiased**: training scenes are independent of the class;
* **scene-biased**: in training a clip's scene comes from its class's group with probability
  ``scene_bias``; the test clips are always uncorrelated, so a model that learned the scene falls
  towards chance.

It evaluates each model on the same test clips and writes ``results.json``, ``report.md`` and its
figures (the Fig. 4-style frame average beside DA with the static-leakage map, training curves,
alpha over training, ENoPR against the recognition loss, confusion matrices) into ``out``.
The defaults were chosen by the training-budget probe of docs/demo.md.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

__all__ = ["DemoConfig", "INPUTS", "BACKBONES", "demo_config", "run_demo", "merge_reports", "train_and_evaluate",
           "format_table"]

INPUTS = ("rgb", "rgb_diff", "dynamic_image", "pwtp", "pwtp_remove")
# demo input -> (representation, its fixed keyword arguments)
_REPRESENTATIONS = {"pwtp_remove": ("pwtp", {"static": "remove"})}
BACKBONES = ("small_tsm", "small2d", "small3d")
STUDIES = ("joint", "frames", "backbones")
SETTINGS = ("unbiased", "biased")
# (strategy, alpha, MGDA normalisation, backbone gradient): Table 5 (Eq. 9 as written: the backbone
# on (1 - alpha) grad L2), the same constants with the backbone on the full grad L2 (Algorithm 1's
# line 6, so that only PWTP's training differs from MGDA's), Appendix D's scheduler, MGDA with
# Sener and Koltun's gradient normalisations and MGDA-UB (dynapp.joint); docs/joint.md
STRATEGIES = (("separate", 0.0, "none", "weighted"), ("constant", 0.0, "none", "weighted"),
              ("constant", 0.5, "none", "weighted"), ("constant", 0.9, "none", "weighted"),
              ("constant", 0.5, "none", "full"), ("constant", 0.9, "none", "full"),
              ("mgda", 0.0, "none", "full"), ("mgda", 0.0, "loss", "full"), ("mgda", 0.0, "loss+", "full"),
              ("mgda_ub", 0.0, "loss+", "full"), ("scheduler", 0.0, "none", "weighted"),
              ("scheduler", 0.0, "none", "full"))


@dataclass
class DemoConfig:
    """Sizes of the demo (defaults: docs/demo.md, the budget and headroom probe)."""

    num_classes: int = 8
    num_scenes: int = 16
    size: int = 32
    segments: int = 4
    frames: int = 8
    num_train: int = 960
    num_val: int = 256  # validation clips: every choice (strategy, budget) is made on these, never on the test clips
    num_test: int = 256
    epochs: int = 6
    batch_size: int = 32
    lr: float = 0.05
    scene_bias: float = 0.8
    shake: float = 0.0
    flicker: float = 0.05
    noise: float = 0.02
    distractors: int = 3
    moving_distractors: int = 1
    actor_scale: tuple = (0.09, 0.14)
    speed: tuple = (0.3, 0.6)
    backbone: str = "small_tsm"
    widths: tuple = (32, 64, 128, 128)
    rank: int = 1
    inputs: tuple = INPUTS
    settings: tuple = SETTINGS
    threads: int = 1
    extra: dict = field(default_factory=dict)


QUICK = dict(num_train=96, num_val=48, num_test=48, epochs=2, size=24, widths=(16, 32, 32, 32))


def demo_config(*, quick: bool = False, threads: int = 1, inputs: str | None = None, **overrides) -> DemoConfig:
    """The default (or ``quick``) config with the command line's overrides (None: keep)."""
    cfg = DemoConfig(**QUICK) if quick else DemoConfig()
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if overrides.get("backbone") not in (None, *BACKBONES):
        raise ValueError(f"--backbone: unknown {overrides['backbone']!r}; choose from {', '.join(BACKBONES)}")
    cfg = replace(cfg, threads=threads, **{k: v for k, v in overrides.items() if v is not None})
    if inputs:
        names = tuple(n.strip() for n in inputs.split(",") if n.strip())
        unknown = [n for n in names if n not in INPUTS]
        if unknown or not names:
            raise ValueError(f"--inputs: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(INPUTS)}")
        cfg = replace(cfg, inputs=names)
    for key in ("epochs", "num_train", "num_val", "num_test"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(cfg, key)}")
    if cfg.size < 8:
        raise ValueError(f"--size must be >= 8, got {cfg.size}")
    if cfg.num_train < cfg.batch_size:
        cfg = replace(cfg, batch_size=max(1, cfg.num_train))
    return cfg


def _data_kwargs(cfg: DemoConfig, seed: int) -> dict:
    return dict(segments=cfg.segments, frames=cfg.frames, num_classes=cfg.num_classes, num_scenes=cfg.num_scenes,
                size=cfg.size, shake=cfg.shake, flicker=cfg.flicker, noise=cfg.noise,
                distractors=cfg.distractors, moving_distractors=cfg.moving_distractors,
                actor_scale=tuple(cfg.actor_scale), speed=tuple(cfg.speed), seed=seed, cache=True)


def parse_studies(study: str | None) -> tuple[str, ...]:
    """``--study``: a comma list of joint, frames, backbones (None or empty: no study)."""
    names = tuple(n.strip() for n in (study or "").split(",") if n.strip())
    for n in names:
        if n not in STUDIES:
            raise ValueError(f"unknown study {n!r}; choose from {', '.join(STUDIES)}")
    return names


def _representation(cfg: DemoConfig, name: str, rank: int | None = None) -> tuple[str, dict]:
    """The representation and its keyword arguments behind demo input ``name``."""
    rep, kwargs = _REPRESENTATIONS.get(name, (name, {}))
    if rep == "pwtp":
        kwargs = {"rank": rank or cfg.rank, **kwargs}
    return rep, kwargs


def _backbone_kwargs(cfg: DemoConfig) -> dict:
    """small2d and small_tsm take the demo's widths; small3d keeps its own (about the same 0.24M parameters)."""
    return {} if cfg.backbone == "small3d" else {"widths": tuple(cfg.widths)}


def build_demo_data(cfg: DemoConfig, seed: int):
    """{setting: training set}, and the shared test set (uncorrelated scenes)."""
    from dynapp.data.synthetic import SyntheticActions

    kw = _data_kwargs(cfg, seed)
    train = {s: SyntheticActions(num_videos=cfg.num_train, train=True, scene_bias=cfg.scene_bias if s == "biased" else 0.0,
                                 **kw) for s in cfg.settings}
    test = SyntheticActions(num_videos=cfg.num_test, train=False, **kw)
    return train, test


def build_demo_val(cfg: DemoConfig, seed: int):
    """The validation clips of seed ``seed``: laid out like the test clips (uncorrelated scenes),
    drawn from their own random stream (``SyntheticActions(validation=True)``)."""
    from dynapp.data.synthetic import SyntheticActions

    return SyntheticActions(num_videos=cfg.num_val, train=False, validation=True, **_data_kwargs(cfg, seed))


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


def fit(model, train_set, *, cfg: DemoConfig, out_dir: Path, seed: int, strategy: str, alpha: float,
        normalize: str, backbone_grad: str = "weighted") -> None:
    """Train ``model`` with the project's loop (the demo's one call of ``dynapp.engine.train.train``)."""
    from dynapp.config import CheckpointConfig, JointConfig, LogConfig, OptimConfig
    from dynapp.engine.train import train

    train(model, train_set, None, seed=seed, num_workers=0,
          optim=OptimConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=1e-4,
                            warmup_epochs=min(1.0, cfg.epochs / 4), label_smoothing=0.1),
          joint=JointConfig(strategy=strategy, alpha=alpha, separate_epochs=max(1, cfg.epochs // 4),
                            normalize=normalize, backbone_grad=backbone_grad),
          log=LogConfig(out_dir=str(out_dir), csv=True, tensorboard=False, progress=False),
          checkpoint=CheckpointConfig(enabled=False))


def train_and_evaluate(cfg: DemoConfig, rep: str, train_set, test_set, *, out_dir: Path, seed: int,
                       strategy: str = "mgda", alpha: float = 0.5, normalize: str = "none",
                       backbone_grad: str = "weighted", rank: int | None = None, val_set=None) -> dict:
    """Train ``cfg.backbone`` on demo input ``rep`` with the project's training loop, then evaluate it
    on ``test_set`` (``accuracy``) and, if given, on ``val_set`` (``val_accuracy``, for choices)."""
    from dynapp.apps.flops import model_flops
    from dynapp.model import build_model

    representation, rep_kwargs = _representation(cfg, rep, rank)
    bb_kwargs = _backbone_kwargs(cfg)
    torch.manual_seed(seed)
    model = build_model(representation=representation, backbone=cfg.backbone, num_classes=cfg.num_classes,
                        segments=cfg.segments, frames=cfg.frames, dropout=0.0, representation_kwargs=rep_kwargs,
                        backbone_kwargs=bb_kwargs)
    out_dir.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    fit(model, train_set, cfg=cfg, out_dir=out_dir, seed=seed, strategy=strategy, alpha=alpha, normalize=normalize,
        backbone_grad=backbone_grad)
    train_s = time.perf_counter() - tic
    pred, label, enopr = _predict(model, test_set)
    k = cfg.num_classes
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((label, pred), torch.ones_like(label), accumulate=True)
    cost = model_flops(representation=representation, backbone=cfg.backbone, num_classes=k, segments=cfg.segments,
                       frames=cfg.frames, crop=cfg.size, representation_kwargs=rep_kwargs, backbone_kwargs=bb_kwargs)
    log = _read_log(out_dir / "train_log.csv")
    alphas = [r["alpha"] for r in log if not math.isnan(r.get("alpha", math.nan))]
    tail = alphas[-max(1, len(alphas) // 10):]  # the last tenth of training
    da = representation == "pwtp"
    result = {
        "input": rep, "backbone": cfg.backbone, "accuracy": 100.0 * float((pred == label).float().mean()),
        "enopr": enopr, "params": cost.params, "gflops": cost.gflops, "train_s": train_s, "steps": len(log),
        "confusion": confusion.tolist(), "log": log, "strategy": strategy if da else None,
        "normalize": normalize if da and strategy == "mgda" else None,
        "alpha_mean": statistics.fmean(alphas) if da and alphas else None,
        "alpha_end": statistics.fmean(tail) if da and alphas else None,
        "val_accuracy": _accuracy(model, val_set) if val_set is not None else None,
    }
    result.update(input_leakage(model, rep, test_set, cfg.segments, cfg.frames))
    result["_model"] = model
    return result


# ----------------------------------------------------------------------------------------------
# Report.


def _mean_sd(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict], cfg: DemoConfig) -> list[dict]:
    """One row per input: mean (and spread over seeds) of each setting's accuracy and static share, and the costs."""
    rows = []
    for rep in cfg.inputs:
        row = {"input": rep}
        for s in cfg.settings:
            for key, name in (("accuracy", "acc"), ("static_share", "static")):
                row[f"{name}_{s}"], row[f"{name}_{s}_sd"] = _mean_sd([r["results"][s][rep][key] for r in runs])
        first = cfg.settings[0]
        for key in ("enopr", "static_share", "weight_sum", "train_s"):
            row[key], row[f"{key}_sd"] = _mean_sd([r["results"][first][rep][key] for r in runs])
        one = runs[0]["results"][first][rep]
        row.update(params=one["params"], gflops=one["gflops"], steps=one["steps"])
        rows.append(row)
    return rows


def _fmt(v, sd=None, digits=1, seeds=1):
    if v is None:
        return "-"
    s = f"{v:.{digits}f}"
    return f"{s} ± {sd:.{digits}f}" if seeds > 1 and sd is not None else s


def format_table(rows: list[dict], *, chance: float, seeds: int = 1, markdown: bool = False) -> str:
    """The demo table (text or Markdown): accuracy and static share side by side per setting."""
    head = ["input", "acc unbiased %", "static share unbiased", "acc scene-biased %", "static share scene-biased",
            "ENoPR", "weight sum", "params", "GFLOPs", "train s"]
    body = []
    for r in rows:
        body.append([
            r["input"], _fmt(r.get("acc_unbiased"), r.get("acc_unbiased_sd"), 1, seeds),
            _fmt(r.get("static_unbiased"), r.get("static_unbiased_sd"), 3, seeds),
            _fmt(r.get("acc_biased"), r.get("acc_biased_sd"), 1, seeds),
            _fmt(r.get("static_biased"), r.get("static_biased_sd"), 3, seeds),
            _fmt(r["enopr"], r["enopr_sd"], 4, seeds),
            _fmt(r["weight_sum"], r["weight_sum_sd"], 4, seeds), f"{r['params']:,}", f"{r['gflops']:.4f}",
            _fmt(r["train_s"], r["train_s_sd"], 0, seeds)])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines) + f"\n\nChance: {chance:.1f}%."
    widths = [max(len(head[i]), *(len(b[i]) for b in body)) for i in range(len(head))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*b) for b in body] + [f"chance: {chance:.1f}%"])


def _figures(out: Path, cfg: DemoConfig, run: dict, test_set) -> dict[str, str]:
    """Draw the report's figures for one seed's run; returns {name: file}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dynapp.data.transforms import denormalize
    from dynapp.leakage import static_leakage

    files = {}
    first = cfg.settings[0]
    res = run["results"]
    # example frames: one test clip per class (the first test clips all share scene 0)
    n_show = 6
    picks = [next(i for i in range(len(test_set)) if test_set.label_and_scene(i)[0] == c)
             for c in range(cfg.num_classes) if any(test_set.label_and_scene(i)[0] == c for i in range(len(test_set)))]
    fig, axes = plt.subplots(len(picks), n_show, figsize=(1.3 * n_show, 1.35 * len(picks)), squeeze=False)
    for r, j in enumerate(picks):
        clip = test_set.render(j)
        times = [round(t) for t in torch.linspace(0, len(clip.frames) - 1, n_show).tolist()]
        for c, t in enumerate(times):
            axes[r, c].imshow(clip.frames[t])
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(f"frame {t}", fontsize=7)
        axes[r, 0].set_ylabel(test_set.classes[clip.label], fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "examples.png", dpi=100)
    plt.close(fig)
    files["examples"] = "examples.png"
    # Fig. 4 style: frame average beside dynamic appearance, and the static-leakage map
    if "pwtp" in cfg.inputs:
        model = res[first]["pwtp"]["_model"].eval()
        picks = []
        for c in range(cfg.num_classes):
            j = next((i for i in range(len(test_set)) if test_set.label_and_scene(i)[0] == c), None)
            if j is not None:
                picks.append(j)
        x = torch.stack([test_set[j][0] for j in picks])  # (K, C, S*T, H, W)
        T = cfg.frames
        seg = x[:, :, :T]  # first segment
        free = res[first]["pwtp_remove"]["_model"].eval() if "pwtp_remove" in cfg.inputs else None
        with torch.no_grad():
            da = model.representation.pwtp(seg).dynamic  # (K, C, H, W)
            leak = static_leakage(model.representation.pwtp, seg)
            da_free = free.representation.pwtp(seg).dynamic if free is not None else None

        def _rescale(d):  # min-max per image, for display only
            return ((d - d.min()) / (d.max() - d.min() + 1e-12)).permute(1, 2, 0).numpy()

        cols = 3 + (da_free is not None)
        fig, axes = plt.subplots(len(picks), cols, figsize=(2.2 * cols, 2.1 * len(picks)), squeeze=False)
        for r, j in enumerate(picks):
            avg = denormalize(seg[r].mean(1)).clamp(0, 1).permute(1, 2, 0).numpy()
            axes[r, 0].imshow(avg)
            axes[r, 0].set_ylabel(test_set.classes[test_set.label_and_scene(j)[0]], fontsize=8)
            axes[r, 1].imshow(_rescale(da[r]))
            im = axes[r, 2].imshow(leak.weight_sum[r].numpy(), cmap="magma")
            fig.colorbar(im, ax=axes[r, 2], fraction=0.046)
            axes[r, 2].set_title(f"static share {float(leak.static_share[r]):.2f}", fontsize=7)
            if da_free is not None:
                axes[r, 3].imshow(_rescale(da_free[r]))
        names = ("frame average", "dynamic appearance", "weight sum (leak)", "leak-free DA (own model)")
        for a, t in zip(axes[0], names):
            a.set_title(t if a is not axes[0, 2] else f"{t}\n{a.get_title()}", fontsize=8)
        for a in axes.flat:
            a.set_xticks([])
            a.set_yticks([])
        fig.tight_layout()
        fig.savefig(out / "da_frames.png", dpi=110)
        plt.close(fig)
        files["da_frames"] = "da_frames.png"
    # training curves
    fig, axes = plt.subplots(1, len(cfg.settings), figsize=(5.2 * len(cfg.settings), 3.4), squeeze=False)
    for a, s in zip(axes[0], cfg.settings):
        for rep in cfg.inputs:
            log = res[s][rep]["log"]
            a.plot([r["step"] for r in log], [r["rec_loss"] for r in log], label=rep, lw=1)
        a.set_title(f"{s}: training recognition loss", fontsize=9)
        a.set_xlabel("step")
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    files["curves"] = "curves.png"
    if "pwtp" in cfg.inputs:
        log = res[first]["pwtp"]["log"]
        fig, a = plt.subplots(figsize=(5, 3))
        for rep in ("pwtp", "pwtp_remove"):
            if rep in cfg.inputs:
                a.plot([r["step"] for r in res[first][rep]["log"]], [r["alpha"] for r in res[first][rep]["log"]], lw=1,
                       label=rep)
        a.set_xlabel("step")
        a.set_ylabel("alpha (Eq. 12)")
        a.legend(fontsize=7)
        a.set_title(f"MGDA alpha over training ({first})", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "alpha.png", dpi=110)
        plt.close(fig)
        files["alpha"] = "alpha.png"
        fig, a = plt.subplots(figsize=(5, 3.4))
        sc = a.scatter([r["rec_loss"] for r in log], [r["enopr"] for r in log], c=[r["step"] for r in log],
                       s=6, cmap="viridis")
        fig.colorbar(sc, ax=a, label="step")
        a.set_xlabel("recognition loss")
        a.set_ylabel("ENoPR")
        a.set_yscale("log")  # ENoPR falls by orders of magnitude in the first steps
        a.set_title("ENoPR vs recognition loss per step (Fig. 3 style)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "enopr_vs_loss.png", dpi=110)
        plt.close(fig)
        files["enopr_vs_loss"] = "enopr_vs_loss.png"
    # confusion matrices
    fig, axes = plt.subplots(len(cfg.settings), len(cfg.inputs), figsize=(2.4 * len(cfg.inputs), 2.5 * len(cfg.settings)),
                             squeeze=False)
    for i, s in enumerate(cfg.settings):
        for j, rep in enumerate(cfg.inputs):
            cm = torch.tensor(res[s][rep]["confusion"], dtype=torch.float32)
            axes[i, j].imshow((cm / cm.sum(1, keepdim=True).clamp_min(1)).numpy(), vmin=0, vmax=1, cmap="Blues")
            axes[i, j].set_title(f"{rep} ({s})\n{res[s][rep]['accuracy']:.1f}%", fontsize=7)
            axes[i, j].set_xticks(range(cfg.num_classes))
            axes[i, j].set_yticks(range(cfg.num_classes))
            axes[i, j].set_xticklabels(test_set.classes, rotation=90, fontsize=5)
            axes[i, j].set_yticklabels(test_set.classes, fontsize=5)
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110)
    plt.close(fig)
    files["confusion"] = "confusion.png"
    return files


def _leakage_figure(out: Path, cfg: DemoConfig, runs: list[dict], studies: dict) -> dict[str, str]:
    """Scene-biased accuracy against the scene-biased model's static share: every input and seed
    of the main runs (filled markers), and the studies' rows (joint strategies, other backbones)."""
    if "biased" not in cfg.settings:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {rep: f"C{i}" for i, rep in enumerate(INPUTS)}
    # inputs with no static share at all sit at 0; spread them a little so that none hides another
    nudge = {rep: 0.0015 * (i - 2) for i, rep in enumerate(INPUTS)}

    def x_of(share, rep):
        return share if share > 0 else nudge[rep]

    fig, a = plt.subplots(figsize=(6.4, 4.2))
    for rep in cfg.inputs:
        pts = [(x_of(r["results"]["biased"][rep]["static_share"], rep), r["results"]["biased"][rep]["accuracy"])
               for r in runs]
        a.scatter(*zip(*pts), color=colours[rep], marker="o", s=36, label=f"{rep} ({cfg.backbone})", zorder=3)
    markers = {"small2d": "s", "small3d": "^", "small_tsm": "o"}
    for row in studies.get("backbones", []):
        if row["backbone"] != cfg.backbone and "acc_biased" in row:
            a.scatter(x_of(row["static_biased"], row["input"]), row["acc_biased"], color=colours[row["input"]],
                      marker=markers[row["backbone"]],
                      s=30, facecolors="none", zorder=2)
    for b in sorted({row["backbone"] for row in studies.get("backbones", [])} - {cfg.backbone}):
        a.scatter([], [], color="grey", marker=markers[b], facecolors="none", label=f"{b} (backbone study)")
    joint = [row for row in studies.get("joint", []) if row["setting"] == "biased"]
    if joint:
        a.scatter([r["static_share"] for r in joint], [r["accuracy"] for r in joint], color=colours["pwtp"], marker="x",
                  s=30, label="pwtp, joint strategies", zorder=2)
        for r in joint:
            a.annotate(r["strategy"], (r["static_share"], r["accuracy"]), fontsize=5, alpha=0.8,
                       xytext=(3, 2), textcoords="offset points")
    a.axhline(100.0 / cfg.num_classes, color="k", lw=0.8, ls=":", label="chance")
    a.set_xscale("symlog", linthresh=0.01)  # the zero-sum inputs sit at 0, DA near 0.01-0.1, RGB near 1
    a.set_xlim(-0.006, 1.3)
    a.set_ylim(0, 100)
    a.set_xlabel("static share of the input (scene-biased model, test clips; symlog; zeros spread)")
    a.set_ylabel("accuracy after scene-biased training %")
    a.set_title("Does the input's static content cost accuracy under scene bias?", fontsize=9)
    a.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(out / "leakage_vs_accuracy.png", dpi=110)
    plt.close(fig)
    return {"leakage_vs_accuracy": "leakage_vs_accuracy.png"}


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.processor() or platform.platform()}"


def _strategy_name(strategy: str, alpha: float, normalize: str, backbone_grad: str = "weighted") -> str:
    """``constant 0.5``, ``constant 0.5 full`` (the backbone on the full grad L2), ``mgda loss+``, ..."""
    full = backbone_grad == "full" and strategy in ("constant", "scheduler")
    return (strategy + (f" {alpha}" if strategy == "constant" else "") + (f" {normalize}" if normalize != "none" else "")
            + (" full" if full else ""))


def _study(cfg: DemoConfig, study: str, seed: int, out: Path, echo, data, first: dict) -> list[dict]:
    """One study on seed ``seed``'s data ``data`` = (training sets, validation set, test set); ``first``:
    that seed's results.

    joint: PWTP with every strategy of :data:`STRATEGIES` (Table 5, the scheduler, MGDA's
    normalisations, MGDA-UB, the constants with the full backbone gradient) in every setting, with
    validation and test accuracy (run on every seed: :func:`apply_rule` needs them); frames: the
    T x D grid of Table 4b on the unbiased data; backbones: every input in every setting with each
    of :data:`BACKBONES` (the demo's own backbone's rows are ``first``).
    """
    rows = []
    train_sets, val_set, test_set = data
    if study == "joint":
        for setting in cfg.settings:
            for strategy, alpha, normalize, backbone_grad in STRATEGIES:
                name = _strategy_name(strategy, alpha, normalize, backbone_grad)
                r = train_and_evaluate(cfg, "pwtp", train_sets[setting], test_set, seed=seed, strategy=strategy,
                                       alpha=alpha, normalize=normalize, backbone_grad=backbone_grad, val_set=val_set,
                                       out_dir=out / "study" / "joint" / f"seed{seed}" / setting / name.replace(" ", "_"))
                rows.append({"seed": seed, "setting": setting, "strategy": name, "val_accuracy": r["val_accuracy"],
                             "accuracy": r["accuracy"], "enopr": r["enopr"], "static_share": r["static_share"],
                             "alpha_mean": r["alpha_mean"], "alpha_end": r["alpha_end"]})
                echo(f"  seed {seed} {setting:<8} {name:<18} val {r['val_accuracy']:5.1f}%  test {r['accuracy']:5.1f}%  "
                     f"ENoPR {r['enopr']:.4f}  static share {r['static_share']:.3f}  "
                     f"alpha mean {r['alpha_mean']:.2f} end {r['alpha_end']:.2f}")
    elif study == "frames":
        total = cfg.segments * cfg.frames
        for T in (4, 8):
            for D in (1, 2, 3):
                if D >= T or total % T:
                    continue
                c = replace(cfg, frames=T, segments=total // T, settings=("unbiased",))
                sets, test = build_demo_data(c, seed)  # no choice is made on this study's test accuracy
                r = train_and_evaluate(c, "pwtp", sets["unbiased"], test, out_dir=out / "study" / f"T{T}_D{D}",
                                       seed=seed, rank=D)
                rows.append({"T": T, "D": D, "S": total // T, "accuracy": r["accuracy"], "enopr": r["enopr"],
                             "gflops": r["gflops"]})
                echo(f"  T={T} D={D} S={total // T}: acc {r['accuracy']:.1f}%  ENoPR {r['enopr']:.4f}")
    elif study == "backbones":
        for backbone in BACKBONES:
            c = replace(cfg, backbone=backbone)
            for rep in cfg.inputs:
                row = {"backbone": backbone, "input": rep}
                for setting in cfg.settings:
                    if backbone == cfg.backbone:
                        r = first[setting][rep]
                    else:
                        r = train_and_evaluate(c, rep, train_sets[setting], test_set, seed=seed,
                                               out_dir=out / "study" / "backbones" / backbone / setting / rep)
                        echo(f"  {backbone:<9} {setting:<8} {rep:<14} acc {r['accuracy']:5.1f}%  "
                             f"static share {r['static_share']:.3f}")
                    row[f"acc_{setting}"], row[f"static_{setting}"] = r["accuracy"], r["static_share"]
                rows.append({**row, "params": r["params"], "gflops": r["gflops"]})
    else:
        raise ValueError(f"unknown study {study!r}; choose from {', '.join(STUDIES)}")
    return rows


def run_demo(cfg: DemoConfig | None = None, *, out: str | os.PathLike = "runs/demo", seeds: int = 1, seed: int = 0,
             study: str | None = None, echo=None) -> dict:
    """Run the demo and write the report folder; returns the results dict (also results.json)."""
    cfg = cfg or DemoConfig()
    echo = echo or (lambda line: print(line, flush=True))
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    studies_asked = parse_studies(study)
    unknown = set(cfg.inputs) - set(INPUTS)
    if unknown:
        raise ValueError(f"unknown inputs {sorted(unknown)}; choose from {', '.join(INPUTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))
    wall = time.perf_counter()
    runs = []
    studies: dict[str, list] = {}
    try:
        for k in range(seeds):
            s = seed + k
            train_sets, test_set = build_demo_data(cfg, s)
            val_set = build_demo_val(cfg, s)
            tic = time.perf_counter()
            for held_out in (val_set, test_set):  # generate (and cache) the held-out clips once
                for i in range(len(held_out)):
                    held_out.clip_uint8(i)
            results = {}
            for setting in cfg.settings:
                results[setting] = {}
                for rep in cfg.inputs:
                    r = train_and_evaluate(cfg, rep, train_sets[setting], test_set, val_set=val_set,
                                           out_dir=out / "runs" / f"seed{s}" / setting / rep, seed=s)
                    results[setting][rep] = r
                    echo(f"seed {s} {setting:<8} {rep:<14} val {r['val_accuracy']:5.1f}%  test {r['accuracy']:5.1f}%  "
                         f"train {r['train_s']:.0f} s ({r['steps']} steps)")
            runs.append({"seed": s, "results": results, "data_s": time.perf_counter() - tic})
            if k == 0:
                figures = _figures(out, cfg, runs[0], test_set)
                first_data = (train_sets, val_set, test_set)
            if "joint" in studies_asked:  # every seed: the rule of docs/joint.md averages over seeds
                echo(f"study joint (seed {s}):")
                studies.setdefault("joint", []).extend(
                    _study(cfg, "joint", s, out, echo, (train_sets, val_set, test_set), results))
        for name in studies_asked:
            if name == "joint":
                continue
            echo(f"study {name} (seed {seed}):")
            studies[name] = _study(cfg, name, seed, out, echo, first_data, runs[0]["results"])
        studies = {name: studies[name] for name in studies_asked}
        del first_data
    finally:
        torch.set_num_threads(old_threads)
    for r in runs:  # drop the models and keep the rest JSON-friendly
        for s in r["results"].values():
            for v in s.values():
                v.pop("_model", None)
    return _finish(out, cfg, runs, studies, figures, [{"folder": str(out), "seeds": [r["seed"] for r in runs],
                                                        "wall_s": time.perf_counter() - wall}], echo)


# The pre-registered rule that chooses the default joint strategy (docs/joint.md): the candidates,
# the strategy that stays the default unless another beats it, the seeds and the margin.
RULE_CANDIDATES = ("mgda", "mgda_ub loss+", "constant 0.5 full", "constant 0.9 full", "scheduler full", "separate")
RULE_BASELINE = "mgda"
RULE_SEEDS = 5
RULE_MARGIN = 1.0  # points of mean validation accuracy


def apply_rule(rows: list[dict], settings: tuple = SETTINGS) -> dict:
    """The rule of docs/joint.md on the joint study's rows (validation accuracy only).

    ``score`` of a candidate = the mean over ``settings`` of its mean validation accuracy over
    seeds.  The best-scoring candidate (ties: the earlier in :data:`RULE_CANDIDATES`) replaces
    :data:`RULE_BASELINE` only if its score is at least :data:`RULE_MARGIN` points higher AND its
    mean is not lower in any setting; otherwise the baseline stays.  ``complete`` says whether
    every candidate has at least :data:`RULE_SEEDS` seeds in every setting (an incomplete study
    decides nothing: ``winner`` is then None).
    """
    acc: dict[str, dict[str, list[float]]] = {c: {s: [] for s in settings} for c in RULE_CANDIDATES}
    for r in rows:
        if r["strategy"] in acc and r["setting"] in settings and r.get("val_accuracy") is not None:
            acc[r["strategy"]][r["setting"]].append(float(r["val_accuracy"]))
    complete = all(len(v) >= RULE_SEEDS for c in acc.values() for v in c.values())
    means = {c: {s: (statistics.fmean(v) if v else None) for s, v in per.items()} for c, per in acc.items()}
    scores = {c: (None if None in m.values() else statistics.fmean(m.values())) for c, m in means.items()}
    ranked = sorted((c for c in RULE_CANDIDATES if scores[c] is not None), key=lambda c: -scores[c])
    best = ranked[0] if ranked else None
    base = RULE_BASELINE
    beats = (best is not None and best != base and scores[base] is not None
             and scores[best] >= scores[base] + RULE_MARGIN and all(means[best][s] >= means[base][s] for s in settings))
    seeds = {c: min(len(v) for v in per.values()) for c, per in acc.items()}
    return {"complete": complete, "winner": (best if beats else base) if complete else None, "best": best,
            "scores": scores, "means": means, "seeds": seeds}


def _rule_line(rule: dict) -> str:
    scores = ", ".join(f"{c} {v:.1f}" for c, v in sorted(((c, v) for c, v in rule["scores"].items() if v is not None),
                                                          key=lambda kv: -kv[1])) or "none yet"
    if not rule["complete"]:
        return (f"default-strategy rule (docs/joint.md): not decided, it needs >= {RULE_SEEDS} seeds of every candidate "
                f"in every setting (have {min(rule['seeds'].values())}); mean validation accuracy: {scores}")
    return f"default-strategy rule (docs/joint.md): {rule['winner']}; mean validation accuracy: {scores}"


def _finish(out: Path, cfg: DemoConfig, runs: list[dict], studies: dict, figures: dict, parts: list[dict], echo) -> dict:
    """Summarise, draw the static-share figure, write results.json and report.md; returns the payload."""
    figures = {**figures, **_leakage_figure(out, cfg, runs, studies)}
    wall_s = sum(p["wall_s"] for p in parts)
    rows = summarise(runs, cfg)
    chance = 100.0 / cfg.num_classes
    echo(format_table(rows, chance=chance, seeds=len(runs)))
    echo(f"wall time {wall_s:.0f} s; report in {out / 'report.md'}")
    payload = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
               "seeds": [r["seed"] for r in runs], "chance": chance, "summary": rows, "runs": runs,
               "studies": studies, "wall_s": wall_s, "parts": parts, "machine": _machine(), "torch": torch.__version__,
               "threads": cfg.threads, "figures": figures}
    if "joint" in studies:
        payload["joint_rule"] = apply_rule(studies["joint"], cfg.settings)
        echo(_rule_line(payload["joint_rule"]))
    (out / "results.json").write_text(json.dumps(payload, indent=1) + "\n")
    _write_report(out, cfg, rows, payload, len(runs), figures, studies)
    return payload


def _config_from_json(d: dict) -> DemoConfig:
    return DemoConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def merge_reports(folders: list[str | os.PathLike], *, out: str | os.PathLike, echo=None) -> dict:
    """One report from the results.json of several demo runs of the same benchmark (no training).

    Runs of the first folder's backbone and inputs (distinct seeds, e.g. ``--seed 0``, ``--seed
    1``, ... run in parallel) make the main table; a run with another backbone adds its first
    seed as that backbone's rows of the ``backbones`` study; every folder's studies are kept.
    The seed-0 figures are copied from the first folder.  All folders must share the benchmark
    (everything in the config but inputs, backbone and threads).
    """
    echo = echo or (lambda line: print(line, flush=True))
    if not folders:
        raise ValueError("--from: no folders given")
    loaded = []
    for f in folders:
        path = Path(f) / "results.json"
        if not path.is_file():
            raise ValueError(f"--from: {path} does not exist (not a finished demo run)")
        loaded.append((Path(f), json.loads(path.read_text())))
    cfg = _config_from_json(loaded[0][1]["config"])
    bench = lambda c: {k: v for k, v in c.items() if k not in ("inputs", "backbone", "threads")}  # noqa: E731
    runs, studies, others, parts = [], {}, {}, []
    for folder, data in loaded:
        if bench(data["config"]) != bench(loaded[0][1]["config"]):
            raise ValueError(f"--from: {folder} is not the same benchmark as {loaded[0][0]} (configs differ)")
        parts.append({"folder": str(folder), "seeds": data["seeds"], "wall_s": data["wall_s"]})
        same_inputs = tuple(data["config"]["inputs"]) == cfg.inputs
        if same_inputs and data["config"]["backbone"] == cfg.backbone:
            seen = {r["seed"] for r in runs}
            if seen & set(data["seeds"]):
                raise ValueError(f"--from: seed(s) {sorted(seen & set(data['seeds']))} of {folder} are already merged")
            runs += data["runs"]
        elif same_inputs:
            others[data["config"]["backbone"]] = data["runs"][0]["results"]
        for name, rows in data["studies"].items():
            if name in studies:
                raise ValueError(f"--from: study {name!r} is in two folders")
            studies[name] = rows
    if not runs:
        raise ValueError(f"--from: no run of {loaded[0][0]}'s backbone and inputs")
    runs.sort(key=lambda r: r["seed"])
    if others and "backbones" not in studies:
        first = runs[0]["results"]
        rows = []
        for backbone in [cfg.backbone, *sorted(others, key=BACKBONES.index)]:
            res = first if backbone == cfg.backbone else others[backbone]
            for rep in cfg.inputs:
                row = {"backbone": backbone, "input": rep}
                for setting in cfg.settings:
                    row[f"acc_{setting}"], row[f"static_{setting}"] = (res[setting][rep]["accuracy"],
                                                                      res[setting][rep]["static_share"])
                rows.append({**row, "params": res[cfg.settings[0]][rep]["params"],
                             "gflops": res[cfg.settings[0]][rep]["gflops"]})
        studies["backbones"] = rows
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {k: v for k, v in loaded[0][1]["figures"].items() if k != "leakage_vs_accuracy"}
    for f in figures.values():
        if (loaded[0][0] / f).resolve() != (out / f).resolve():
            shutil.copyfile(loaded[0][0] / f, out / f)
    return _finish(out, cfg, runs, studies, figures, parts, echo)


def _write_report(out: Path, cfg: DemoConfig, rows, payload, seeds, figures, studies) -> None:
    chance = payload["chance"]
    lines = [
        "# dynapp demo report", "",
        f"Same-scene synthetic actions ({cfg.num_classes} motion classes, {cfg.num_scenes} shared scenes, "
        f"{cfg.size}x{cfg.size} px, {cfg.segments} segments x {cfg.frames} frames, {cfg.num_train} training / "
        f"{cfg.num_val} validation / {cfg.num_test} test clips, {cfg.epochs} epochs of batch {cfg.batch_size}; {cfg.moving_distractors} swaying "
        f"distractors, actor half-size {cfg.actor_scale[0]}-{cfg.actor_scale[1]} of the frame, shake {cfg.shake} px); "
        f"backbone {cfg.backbone} for every input; PWTP trained jointly with MGDA (pwtp_remove: PWTP(static='remove')).  Scene-biased setting: training scene from the class's group with "
        f"probability {cfg.scene_bias}; test scenes uncorrelated.  Seeds: {payload['seeds']}"
        + (" (mean ± sd)." if seeds > 1 else "."), "",
        format_table(rows, chance=chance, seeds=seeds, markdown=True), "",
        "Columns: accuracy on the uncorrelated test clips after training on unbiased / scene-biased data, "
        "each beside the static share of that model's input = fraction of the input's energy that comes from "
        "the temporal mean of each pixel (dynapp.leakage, on the test clips; RGB difference is 0 by "
        "construction); ENoPR (Eq. 7) of the test clips, weight sum = mean per-pixel sum of the temporal "
        "weights and training time: unbiased models; params and GFLOPs (multiply-adds) per view.", "",
        f"Wall time {payload['wall_s']:.0f} s on {payload['machine']}, torch {payload['torch']}, "
        f"{payload['threads']} thread(s)"
        + ("." if len(payload["parts"]) == 1 else "; merged from " + ", ".join(
            f"{p['folder']} (seeds {p['seeds']}, {p['wall_s']:.0f} s)" for p in payload["parts"]) + "."), "",
    ]
    titles = {"examples": "Example test clips (one per class, same scene)", "da_frames": "Frame average, dynamic appearance, its static leakage and leak-free DA (first segment, one test clip per class)",
              "curves": "Training curves", "alpha": "MGDA alpha over training",
              "enopr_vs_loss": "ENoPR against the recognition loss", "confusion": "Confusion matrices (rows: true class)",
              "leakage_vs_accuracy": "Scene-biased accuracy against static share"}
    for key, f in figures.items():
        lines += [f"## {titles[key]}", "", f"![{key}]({f})", ""]
    about = {"joint": "PWTP with each joint-training strategy, every setting, every seed; val_accuracy on the "
                      "validation clips (the only accuracy any choice may use), accuracy on the test clips; "
                      "alpha_mean / alpha_end: the mean of alpha over training / over its last tenth."
                      + (" " + _rule_line(payload["joint_rule"]) + "." if "joint_rule" in payload else ""),
             "frames": "PWTP on the unbiased data, first seed.",
             "backbones": "Every input with each backbone, every setting, first seed; static_*: static share."}
    for name, rows_ in studies.items():
        keys = list(rows_[0]) if rows_ else []
        cell = lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
        lines += [f"## Study: {name}", "", about[name], "",
                  "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows_] + [""]
    (out / "report.md").write_text("\n".join(lines))
