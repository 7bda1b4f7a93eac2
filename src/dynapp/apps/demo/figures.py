"""The demo report's figures, one function each; every one returns ``{name: file}`` (empty when it does not apply)."""

from __future__ import annotations

from pathlib import Path

import torch

from dynapp.apps.demo.config import DEFAULT_JOINT, INPUTS, DemoConfig
from dynapp.apps.demo.studies import strategy_name


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str, dpi: int = 110) -> dict[str, str]:
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=dpi)
    _pyplot().close(fig)
    return {name: f"{name}.png"}


def examples_figure(out: Path, cfg: DemoConfig, res: dict, test_set) -> dict[str, str]:
    """Example frames: one test clip per class (the first test clips all share scene 0)."""
    plt = _pyplot()
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
    return _save(fig, out, "examples", dpi=100)


def da_frames_figure(out: Path, cfg: DemoConfig, res: dict, test_set) -> dict[str, str]:
    """Fig. 4 style: frame average beside dynamic appearance, the static-leakage map and leak-free DA."""
    if "pwtp" not in cfg.inputs:
        return {}
    from dynapp.data.transforms import denormalize
    from dynapp.leakage import static_leakage

    plt = _pyplot()
    first = cfg.settings[0]
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
    return _save(fig, out, "da_frames")


def curves_figure(out: Path, cfg: DemoConfig, res: dict, test_set) -> dict[str, str]:
    """Training recognition loss of every input, one panel per setting."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(cfg.settings), figsize=(5.2 * len(cfg.settings), 3.4), squeeze=False)
    for a, s in zip(axes[0], cfg.settings):
        for rep in cfg.inputs:
            log = res[s][rep]["log"]
            a.plot([r["step"] for r in log], [r["rec_loss"] for r in log], label=rep, lw=1)
        a.set_title(f"{s}: training recognition loss", fontsize=9)
        a.set_xlabel("step")
        a.legend(fontsize=7)
    return _save(fig, out, "curves")


def alpha_figure(out: Path, cfg: DemoConfig, res: dict, test_set) -> dict[str, str]:
    """The joint strategy's alpha (the weight of ENoPR) over training (first setting)."""
    if "pwtp" not in cfg.inputs:
        return {}
    plt = _pyplot()
    first = cfg.settings[0]
    fig, a = plt.subplots(figsize=(5, 3))
    for rep in ("pwtp", "pwtp_remove"):
        if rep in cfg.inputs:
            a.plot([r["step"] for r in res[first][rep]["log"]], [r["alpha"] for r in res[first][rep]["log"]], lw=1,
                   label=rep)
    a.set_xlabel("step")
    a.set_ylabel("alpha (weight of ENoPR)")
    a.legend(fontsize=7)
    a.set_title(f"alpha over training, {strategy_name(*DEFAULT_JOINT)} ({first})", fontsize=9)
    return _save(fig, out, "alpha")


def enopr_figure(out: Path, cfg: DemoConfig, res: dict, test_set) -> dict[str, str]:
    """ENoPR against the recognition loss, per step (Fig. 3 style; first setting)."""
    if "pwtp" not in cfg.inputs:
        return {}
    plt = _pyplot()
    log = res[cfg.settings[0]]["pwtp"]["log"]
    fig, a = plt.subplots(figsize=(5, 3.4))
    sc = a.scatter([r["rec_loss"] for r in log], [r["enopr"] for r in log], c=[r["step"] for r in log],
                   s=6, cmap="viridis")
    fig.colorbar(sc, ax=a, label="step")
    a.set_xlabel("recognition loss")
    a.set_ylabel("ENoPR")
    a.set_yscale("log")  # ENoPR falls by orders of magnitude in the first steps
    a.set_title("ENoPR vs recognition loss per step (Fig. 3 style)", fontsize=9)
    return _save(fig, out, "enopr_vs_loss")


def confusion_figure(out: Path, cfg: DemoConfig, res: dict, test_set) -> dict[str, str]:
    """Confusion matrices of every input and setting (rows: true class)."""
    plt = _pyplot()
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
    return _save(fig, out, "confusion")


# The figures of one seed's run, in the report's order.
RUN_FIGURES = (examples_figure, da_frames_figure, curves_figure, alpha_figure, enopr_figure, confusion_figure)


def draw_figures(out: Path, cfg: DemoConfig, run: dict, test_set) -> dict[str, str]:
    """Draw the report's figures for one seed's run; returns {name: file}."""
    files = {}
    for figure in RUN_FIGURES:
        files.update(figure(out, cfg, run["results"], test_set))
    return files


def leakage_figure(out: Path, cfg: DemoConfig, runs: list[dict], studies: dict) -> dict[str, str]:
    """Scene-biased accuracy against the scene-biased model's static share: every input and seed
    of the main runs (filled markers), and the studies' rows (joint strategies, other backbones)."""
    if "biased" not in cfg.settings:
        return {}
    plt = _pyplot()
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
    return _save(fig, out, "leakage_vs_accuracy")
