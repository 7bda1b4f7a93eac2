"""The ``dynapp`` command line.  Each command parses its options and calls one library function."""

from __future__ import annotations

import os
import sys
import warnings

import typer

from dynapp.names import BACKBONES, REPRESENTATIONS

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_default_show_warning = warnings.showwarning

app = typer.Typer(
    help="dynapp: Dynamic Appearance (PWTP) for video action recognition.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """dynapp's own warnings as one line, ``warning: ...``, without the place in the code that
    raised them (a skipped video would otherwise show a line of torch's DataLoader)."""
    if category.__module__.startswith("dynapp") or str(filename).startswith(_PACKAGE):
        print(f"warning: {message}", file=file or sys.stderr, flush=True)
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


@app.callback()
def _main() -> None:
    """Dynamic Appearance: the Pixel-Wise Temporal Projection and joint training with MGDA."""
    warnings.showwarning = _show_warning  # DataLoader workers forked later inherit it


@app.command()
def version() -> None:
    """Print the installed dynapp version."""
    from dynapp import __version__

    typer.echo(__version__)


@app.command()
def flops(
    representation: str = typer.Option(None, help=", ".join(REPRESENTATIONS) + " (default: rgb)"),
    backbone: str = typer.Option(None, help=", ".join(BACKBONES) + " (default: tsm_resnet50)"),
    num_classes: int = typer.Option(None, help="classifier outputs (default: 174)"),
    segments: int = typer.Option(None, help="S, segments per clip (default: 8)"),
    frames: int = typer.Option(None, help="T, frames per segment (default: 1 for rgb, 8 for the others)"),
    crop: int = typer.Option(None, help="spatial size of the view (default: 224)"),
    checkpoint: str = typer.Option(None, "--checkpoint", help="count the model of a dynapp train checkpoint"),
    config: str = typer.Option(None, "--config", help="count the model of a YAML run config (configs/*.yaml)"),
    paper: bool = typer.Option(False, "--paper", help="print the paper's models beside the published numbers"),
) -> None:
    """GFLOPs (multiply-adds) and parameters per view, the representation and the backbone apart.

    The model of a checkpoint (--checkpoint) or run config (--config), or the one the options
    describe; options given also change the model of a checkpoint or config.
    """
    from dynapp.apps.flops import flops_settings, format_table, model_flops, paper_rows
    from dynapp.config import ConfigError
    from dynapp.engine.checkpoint import CheckpointError

    if paper:
        typer.echo(format_table(paper_rows()))
        return
    try:
        settings = flops_settings(checkpoint=checkpoint, config=config, representation=representation,
                                  backbone=backbone, num_classes=num_classes, segments=segments, frames=frames,
                                  crop=crop)
    except (ConfigError, CheckpointError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    try:
        report = model_flops(**settings)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    typer.echo(format_table([{**settings, "report": report}]))


@app.command("check-data")
def check_data(
    dataset: str = typer.Option(..., help="ucf101, hmdb51, kinetics, minikinetics, ssv1, list or folder"),
    root: str = typer.Option(..., help="the dataset's root folder (see README, Data)"),
    split: int = typer.Option(1, help="official split (1-3 for UCF101/HMDB51)"),
    subset: str = typer.Option("all", help="all, train or test"),
    segments: int = typer.Option(8, help="S; videos shorter than S*T frames are reported"),
    frames: int = typer.Option(8, help="T, frames per segment"),
    quick: bool = typer.Option(False, help="decode only the first and last frame of each video"),
    workers: int = typer.Option(0, help="decoding processes"),
    list_short: bool = typer.Option(False, "--list-short", help="also list every video shorter than S*T frames"),
) -> None:
    """Scan a dataset: list every unreadable video, count the too-short ones; exit 1 if any is unreadable."""
    from dynapp.data.check import run_check_data

    try:
        status = run_check_data(dataset, root, split=split, subset=subset, segments=segments,
                                frames=frames, quick=quick, workers=workers, list_short=list_short, echo=typer.echo)
    except (ValueError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(status)


@app.command()
def extract(
    video: str = typer.Argument(..., help="a video file or a folder of frames"),
    out: str = typer.Option(..., "--out", help="folder for the PNGs"),
    segments: int = typer.Option(8, help="S segments (one PNG each)"),
    frames: int = typer.Option(8, help="T frames per segment"),
    steps: int = typer.Option(200, help="Adam steps fitting PWTP to this video (ignored with --checkpoint)"),
    checkpoint: str = typer.Option(None, help="trained PWTP or model checkpoint instead of fitting"),
    size: int = typer.Option(128, help="short side of the frames, in pixels"),
) -> None:
    """Write the frame average beside the dynamic appearance for each segment of a video (Fig. 4)."""
    from dynapp.data.decode import VideoDecodeError
    from dynapp.apps.extract import extract as run_extract

    try:
        paths = run_extract(video, out, segments=segments, frames=frames, steps=steps,
                            checkpoint=checkpoint, short_side=size)
    except (VideoDecodeError, ValueError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    typer.echo(f"wrote {len(paths)} images to {out}")


@app.command("config")
def config_command(
    config: str = typer.Option(None, "--config", help="YAML run config to resolve (defaults if omitted)"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. data.root=/data/videos"),
) -> None:
    """Every configuration key of dynapp train with its value and its meaning, as YAML.

    Without arguments: the defaults.  With --config and overrides: the resolved configuration
    (what dynapp train would run, and saves as config.yaml in its output folder).
    """
    from dynapp.config import ConfigError, format_config, load_config

    try:
        typer.echo(format_config(load_config(config, overrides or [])))
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)


@app.command()
def train(
    config: str = typer.Option(None, "--config", help="YAML run config (configs/*.yaml); defaults if omitted"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. optim.lr=0.1 joint.strategy=constant"),
    resume: bool = typer.Option(False, "--resume", help="continue from <log.out_dir>/checkpoints/last.pt"),
) -> None:
    """Train a model (one process, or many under torchrun) and evaluate it; see configs/.

    Every configuration key, its default and its meaning: dynapp config

    Your videos, one folder per class: dynapp train data.dataset=folder data.root=PATH log.out_dir=runs/NAME

    Ctrl-C, SIGTERM or SIGUSR1: the run finishes its step, writes a checkpoint, prints how to resume, exits 75.
    """
    import os
    import shlex

    from dynapp.engine.checkpoint import CheckpointError
    from dynapp.config import load_config
    from dynapp.engine.preempt import EXIT_PREEMPTED, Preempted
    from dynapp.engine.run import run_from_config
    from dynapp.engine.train import NonFiniteLossError

    try:
        run_from_config(load_config(config, overrides or []), resume=resume)
    except Preempted:  # the run printed its one line (rank 0) and wrote a checkpoint
        if os.environ.get("WORLD_SIZE", "1") == "1":
            command = ["dynapp", "train", *(["--config", config] if config else []), *(overrides or []), "--resume"]
            typer.echo(f"resume with: {shlex.join(command)}")
        raise typer.Exit(EXIT_PREEMPTED)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            typer.echo("stopped at once (Ctrl-C); the last checkpoint written, if any, resumes the run "
                       "with --resume", err=True)
        raise typer.Exit(130)
    except (ValueError, OSError, CheckpointError, NonFiniteLossError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)


@app.command("eval")
def eval_command(
    checkpoint: list[str] = typer.Option(..., "--checkpoint", help="a checkpoint of dynapp train; repeat it for "
                                         "the 3 split models of UCF101/HMDB51 to get their mean"),
    views: str = typer.Option(None, "--views", help="CLIPSxCROPS, e.g. 2x3 (default: the run's eval config)"),
    out: str = typer.Option(None, "--out", help="JSON file for the results"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides of the saved config, e.g. data.root=/data"),
) -> None:
    """Top-1/top-5/mean class accuracy of a checkpoint, clip level and video level, as JSON."""
    import json

    from dynapp.engine.checkpoint import CheckpointError
    from dynapp.engine.run import eval_from_checkpoint

    try:
        result = eval_from_checkpoint(list(checkpoint), views=views, out=out, overrides=overrides or [])
    except (ValueError, OSError, CheckpointError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    if result:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))


@app.command()
def predict(
    videos: list[str] = typer.Argument(..., help="video files, frame folders, folders of videos or list files (.txt)"),
    checkpoint: str = typer.Option(..., "--checkpoint", help="a checkpoint of dynapp train"),
    topk: int = typer.Option(5, "--topk", help="classes shown per video (or window)"),
    views: str = typer.Option(None, "--views", help="CLIPSxCROPS, e.g. 2x3 (default: the run's test views)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    window: float = typer.Option(None, "--window", help="long videos: slide a window of this many seconds"),
    stride: float = typer.Option(None, "--stride", help="with --window: seconds between window starts"),
    out: str = typer.Option("predictions", "--out", help="with --window: folder for the CSV, JSON and PNG files"),
    fps: float = typer.Option(None, "--fps", help="with --window: frame rate (frame folders have none)"),
    workers: int = typer.Option(0, "--workers", help="decoding processes (whole videos)"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Top-k classes of videos with their probabilities; with --window, class scores over time.

    An unreadable video is reported and skipped; the exit status is 1 if any was.
    """
    from dynapp.apps.predict import run_predict
    from dynapp.data.decode import VideoDecodeError
    from dynapp.engine.checkpoint import CheckpointError

    try:
        status = run_predict(videos, checkpoint, topk=topk, views=views, as_json=as_json, window=window,
                             stride=stride, out=out, fps=fps, workers=workers, device=device, progress=progress,
                             echo=typer.echo)
    except (ValueError, OSError, CheckpointError, VideoDecodeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    raise typer.Exit(status)


@app.command()
def features(
    videos: list[str] = typer.Argument(None, help="video files, folders or list files (or use --dataset/--root)"),
    checkpoint: str = typer.Option(..., "--checkpoint", help="a checkpoint of dynapp train"),
    out: str = typer.Option(..., "--out", help="folder for features.npy, index.csv and the per-video files"),
    dataset: str = typer.Option(None, "--dataset", help="ucf101, hmdb51, kinetics, minikinetics, ssv1, list or folder"),
    root: str = typer.Option(None, "--root", help="the dataset's root folder"),
    split: int = typer.Option(1, "--split", help="official split (1-3 for UCF101/HMDB51)"),
    subset: str = typer.Option("all", "--subset", help="all, train or test"),
    views: str = typer.Option(None, "--views", help="CLIPSxCROPS (default: the run's test views)"),
    save_frames: bool = typer.Option(False, "--save-frames", help="also save the representation's (DA) frames"),
    workers: int = typer.Option(0, "--workers", help="decoding processes"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Pooled backbone features (before the classifier) of every video, to .npy + index.csv; resumable."""
    from dynapp.apps.features import dataset_videos, extract_features
    from dynapp.apps.inference import load, parse_views
    from dynapp.apps.predict import collect_videos
    from dynapp.engine.checkpoint import CheckpointError

    try:
        if bool(dataset) == bool(videos) or bool(dataset) != bool(root):
            raise ValueError("give either videos or --dataset with --root")
        labels = classes = None
        if dataset:
            paths, labels, classes = dataset_videos(dataset, root, split=split, subset=subset)
        else:
            paths = collect_videos(videos)
        recognizer = load(checkpoint, device=device)
        result = extract_features(recognizer, paths, out, labels=labels, classes=classes, views=parse_views(views),
                                  save_frames=save_frames, workers=workers, progress=progress,
                                  on_error=lambda msg: typer.echo(f"error: {msg}", err=True))
    except (ValueError, OSError, CheckpointError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    shape = " x ".join(str(s) for s in result["shape"])
    typer.echo(f"{result['done']} videos done, {result['skipped']} already done, {len(result['failed'])} failed; "
               f"{result['features']} ({shape}) and {result['index']}")
    raise typer.Exit(int(bool(result["failed"])))


@app.command("export")
def export_command(
    checkpoint: str = typer.Option(..., "--checkpoint", help="a checkpoint of dynapp train"),
    fmt: str = typer.Option("onnx", "--format", help="onnx or torchscript"),
    out: str = typer.Option(None, "--out", help="output file (default: beside the checkpoint, .onnx or .ts.pt)"),
    input_dtype: str = typer.Option("uint8", "--input", help="uint8 (decoded frames) or float (normalised) clips"),
    check: bool = typer.Option(True, "--check/--no-check", help="compare the exported model with PyTorch"),
    opset: int = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's)"),
) -> None:
    """Export a trained model (clip -> logits, dynamic batch) to ONNX or TorchScript and check it."""
    from pathlib import Path

    from dynapp.apps.export import FORMATS, export_and_check
    from dynapp.apps.inference import load
    from dynapp.engine.checkpoint import CheckpointError

    if fmt not in FORMATS:
        typer.echo(f"error: --format must be one of {', '.join(FORMATS)}, got {fmt!r}", err=True)
        raise typer.Exit(1)
    path = out or str(Path(checkpoint).with_suffix(".onnx" if fmt == "onnx" else ".ts.pt"))
    try:
        result = export_and_check(load(checkpoint), path, fmt=fmt, input_dtype=input_dtype, check=check, opset=opset)
    except (ValueError, OSError, CheckpointError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    shape = "x".join(str(s) for s in result["shape"])
    typer.echo(f"wrote {result['path']} ({fmt}, input {input_dtype} {shape}, output logits N x classes)")
    if result["max_abs_diff"] is not None:
        typer.echo(f"largest difference of the logits from PyTorch on a random clip: {result['max_abs_diff']:.3g} "
                   f"(the exported path), {result['max_abs_diff_default']:.3g} (dynapp's default path)")


@app.command("precompute-flow")
def precompute_flow_command(
    video: str = typer.Argument(..., help="a video file or a folder of frames"),
    out: str = typer.Option(..., "--out", help="a .npy file, or a folder for flow_x_*/flow_y_* PNGs"),
    method: str = typer.Option("tvl1", help="tvl1 or farneback (OpenCV)"),
    bound: float = typer.Option(20.0, help="clip to +-bound pixels before quantising to uint8"),
    size: int = typer.Option(None, help="short side of the frames, in pixels (default: as decoded)"),
) -> None:
    """Compute a video's optical flow between consecutive frames and save it quantised to uint8."""
    from dynapp.data.decode import VideoDecodeError
    from dynapp.data.flow_files import precompute_video_flow

    try:
        n = precompute_video_flow(video, out, method=method, bound=bound, short_side=size)
    except (VideoDecodeError, ValueError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    typer.echo(f"wrote {n} flow fields to {out}")


@app.command()
def demo(
    out: str = typer.Option("runs/demo", "--out", help="report folder (results.json, report.md, figures)"),
    quick: bool = typer.Option(False, "--quick", help="tiny sizes, seconds (smoke use; accuracies mean nothing)"),
    seeds: int = typer.Option(1, "--seeds", help="repeat with seeds seed..seed+N-1; mean and spread"),
    seed: int = typer.Option(0, "--seed", help="first seed (data and weights)"),
    study: str = typer.Option(None, "--study", help="also run a comma list of 'joint' (Table 5), 'frames' (Table 4b), "
                              "'backbones' (small_tsm, small2d, small3d)"),
    backbone: str = typer.Option(None, "--backbone", help="small_tsm (default: temporal, the paper's protocol), small2d, small3d"),
    threads: int = typer.Option(1, "--threads", help="torch threads per run (1 is fastest on a shared 2-core CPU)"),
    jobs: int = typer.Option(None, "--jobs", help="runs trained at once, one process each (default: 2, or 1 on a "
                             "1-core machine); the results do not depend on it"),
    inputs: str = typer.Option(None, "--inputs", help="comma list of rgb,rgb_diff,dynamic_image,pwtp,pwtp_remove"),
    epochs: int = typer.Option(None, "--epochs", help="override the epochs"),
    num_train: int = typer.Option(None, "--num-train", help="override the training clips per setting"),
    num_test: int = typer.Option(None, "--num-test", help="override the test clips"),
    size: int = typer.Option(None, "--size", help="override the frame size in pixels"),
    from_runs: str = typer.Option(None, "--from", help="comma list of finished demo folders (e.g. one per seed or "
                                  "backbone): write one report from them into --out, no training"),
) -> None:
    """Same-scene synthetic actions: one backbone on RGB, RGB difference, dynamic image, DA and leak-free DA; table + report."""
    from dynapp.apps.demo import demo_config, merge_reports, run_demo

    try:
        if from_runs:
            merge_reports([f.strip() for f in from_runs.split(",") if f.strip()], out=out, echo=typer.echo)
            return
        jobs = jobs if jobs is not None else min(2, os.cpu_count() or 1)
        cfg = demo_config(quick=quick, threads=threads, jobs=jobs, inputs=inputs, epochs=epochs, num_train=num_train,
                          num_test=num_test, size=size, backbone=backbone)
        run_demo(cfg, out=out, seeds=seeds, seed=seed, study=study, echo=typer.echo)
    except (ValueError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
