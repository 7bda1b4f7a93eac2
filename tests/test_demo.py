"""`dynapp demo --quick` end to end (even smaller sizes): table, results.json, report and figures."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from dynapp.cli import app

runner = CliRunner()


def test_demo_quick_writes_the_whole_report(tmp_path):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--num-train", "32", "--num-test", "16",
                              "--epochs", "1", "--size", "16", "--seeds", "2"])
    assert res.exit_code == 0, res.output
    for line in ("rgb_diff", "dynamic_image", "pwtp", "chance: 12.5%"):
        assert line in res.output
    files = {p.name for p in out.iterdir()}
    expected = {"results.json", "report.md", "examples.png", "da_frames.png", "curves.png", "alpha.png", "enopr_vs_loss.png",
                "confusion.png", "leakage_vs_accuracy.png"}
    assert expected <= files, files
    report = (out / "report.md").read_text()
    for name in expected - {"results.json", "report.md"}:
        assert f"]({name})" in report  # every figure is embedded
    data = json.loads((out / "results.json").read_text())
    assert data["seeds"] == [0, 1] and data["chance"] == 12.5
    assert data["config"]["backbone"] == "small_tsm"  # the default: a temporal backbone (the paper's protocol)
    assert "backbone small_tsm for every input" in report
    rows = {r["input"]: r for r in data["summary"]}
    assert set(rows) == set(data["config"]["inputs"]) >= {"rgb", "rgb_diff", "dynamic_image", "pwtp"}
    for r in rows.values():
        for key in ("acc_unbiased", "acc_biased"):
            assert 0.0 <= r[key] <= 100.0 and r[key + "_sd"] is not None
        for key in ("static_unbiased", "static_biased"):  # static share beside each setting's accuracy
            assert 0.0 <= r[key] <= 1.0
        assert r["params"] > 0 and r["gflops"] > 0
    assert rows["pwtp"]["enopr"] > 0 and rows["rgb"]["enopr"] is None
    assert abs(rows["rgb"]["weight_sum"] - 1.0) < 1e-5 and rows["rgb_diff"]["static_share"] == 0.0
    assert 0.0 <= rows["pwtp"]["static_share"] <= 1.0
    # every run's confusion matrix counts every test clip once
    for run in data["runs"]:
        for setting in ("unbiased", "biased"):
            for r in run["results"][setting].values():
                cm = torch.tensor(r["confusion"])
                assert cm.shape == (8, 8) and int(cm.sum()) == 16
                assert abs(100.0 * cm.diag().sum().item() / 16 - r["accuracy"]) < 1e-6
                assert len(r["log"]) == r["steps"] >= 1
    # MGDA's alpha is logged for pwtp and lies in [0, 1]
    alphas = [row["alpha"] for row in data["runs"][0]["results"]["unbiased"]["pwtp"]["log"]]
    assert all(0.0 <= a <= 1.0 for a in alphas)


def test_demo_bad_option_is_one_line_error(tmp_path):
    res = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--inputs", "rgb,optical"])
    assert res.exit_code == 1
    assert "unknown optical" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--study", "tables"])
    assert res.exit_code == 1 and "unknown study 'tables'" in res.output
    res = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--study", "joint,tables"])
    assert res.exit_code == 1 and "unknown study 'tables'" in res.output
    res = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path), "--backbone", "resnet"])
    assert res.exit_code == 1 and "unknown 'resnet'" in res.output and "small_tsm" in res.output
    assert not (tmp_path / "results.json").exists()  # refused before any training


def test_demo_study_joint_runs_every_strategy(tmp_path):
    out = tmp_path / "study"
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--num-train", "32", "--num-test", "16",
                              "--epochs", "4", "--size", "16", "--inputs", "pwtp", "--study", "joint"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    rows = data["studies"]["joint"]
    from dynapp.apps.demo.config import JOINT_STRATEGIES
    from dynapp.apps.demo.studies import strategy_name

    names = [strategy_name(*arm) for arm in JOINT_STRATEGIES]
    assert names[0] == "mgda" and len(names) <= 4  # Eq. 12 and at most three candidates (docs/joint.md)
    assert [(r["setting"], r["strategy"]) for r in rows] == [(s, n) for s in ("unbiased", "biased") for n in names]
    assert all(0.0 <= r["accuracy"] <= 100.0 and r["enopr"] > 0 and 0.0 <= r["static_share"] <= 1.0 for r in rows)
    assert all(0.0 <= r["val_accuracy"] <= 100.0 and r["seed"] == 0 for r in rows)
    unbiased = {r["strategy"]: r for r in rows if r["setting"] == "unbiased"}
    # alpha is logged: a constant is what it says, MGDA's lies in [0, 1], MGDA-UB's in its clamp
    for name, r in unbiased.items():
        if name.startswith("constant"):
            assert r["alpha_mean"] == pytest.approx(float(name.split()[1]))
        elif name.startswith("mgda_ub"):
            assert 0.001 <= r["alpha_mean"] <= 0.999
        else:
            assert 0.0 <= r["alpha_mean"] <= 1.0 and 0.0 <= r["alpha_end"] <= 1.0
    # the arm that is the default strategy is the seed's pwtp run itself, not a second training
    from dynapp.apps.demo.config import DEFAULT_JOINT
    from dynapp.apps.demo.studies import strategy_name

    default = strategy_name(*DEFAULT_JOINT)
    main = data["runs"][0]["results"]["unbiased"]["pwtp"]
    assert (unbiased[default]["val_accuracy"], unbiased[default]["accuracy"]) == (main["val_accuracy"], main["accuracy"])
    trained = {p.name for p in (out / "study" / "joint" / "seed0" / "unbiased").iterdir()}
    assert default.replace(" ", "_") not in trained and len(trained) == len(names) - 1
    # one seed (below the rule's first seed) decides nothing
    assert data["joint_rule"]["complete"] is False and data["joint_rule"]["winner"] is None
    assert "default-strategy rule (docs/joint.md): not decided" in res.output
    report = (out / "report.md").read_text()
    assert "## Study: joint" in report and "alpha_end" in report and "val_accuracy" in report
    import csv

    with open(out / "joint_rows.csv", newline="") as f:  # the per-seed rows, as the docs keep them
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows) and {r["strategy"] for r in csv_rows} == set(names)


def test_demo_backbone_option_and_backbones_study(tmp_path):
    out = tmp_path / "bb"
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--num-train", "16", "--num-test", "16",
                              "--epochs", "1", "--size", "16", "--inputs", "rgb,pwtp", "--backbone", "small2d",
                              "--study", "backbones"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["backbone"] == "small2d"
    run = data["runs"][0]["results"]
    assert {r["backbone"] for s in run.values() for r in s.values()} == {"small2d"}
    rows = data["studies"]["backbones"]
    assert [(r["backbone"], r["input"]) for r in rows] == [(b, i) for b in ("small_tsm", "small2d", "small3d")
                                                           for i in ("rgb", "pwtp")]
    for r in rows:
        assert 0.0 <= r["acc_unbiased"] <= 100.0 and 0.0 <= r["acc_biased"] <= 100.0 and 0.0 <= r["static_biased"] <= 1.0
        if r["backbone"] == "small2d":  # the demo's own backbone: the main runs' numbers
            assert r["acc_biased"] == run["biased"][r["input"]]["accuracy"]
    params = {(r["backbone"], r["input"]): r["params"] for r in rows}
    assert params[("small_tsm", "rgb")] == params[("small2d", "rgb")]  # the shift has no parameters
    assert "## Study: backbones" in (out / "report.md").read_text()


def test_demo_from_merges_parallel_seeds_and_backbones(tmp_path):
    tiny = ["--quick", "--num-train", "16", "--num-test", "16", "--epochs", "1", "--size", "16", "--inputs", "rgb,pwtp"]
    for name, extra in (("s0", ["--seed", "0"]), ("s1", ["--seed", "1"]), ("bb", ["--backbone", "small2d"])):
        res = runner.invoke(app, ["demo", *tiny, "--out", str(tmp_path / name), *extra])
        assert res.exit_code == 0, res.output
    out = tmp_path / "merged"
    res = runner.invoke(app, ["demo", "--from", f"{tmp_path / 's1'},{tmp_path / 's0'},{tmp_path / 'bb'}", "--out", str(out)])
    assert res.exit_code == 0, res.output
    merged = json.loads((out / "results.json").read_text())
    one = {k: json.loads((tmp_path / k / "results.json").read_text()) for k in ("s0", "s1", "bb")}
    assert merged["seeds"] == [0, 1]
    # the main table is the mean and spread over the separate runs' seeds
    for row in merged["summary"]:
        accs = [one[k]["runs"][0]["results"]["biased"][row["input"]]["accuracy"] for k in ("s0", "s1")]
        assert row["acc_biased"] == pytest.approx(sum(accs) / 2)
        assert row["acc_biased_sd"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    rows = merged["studies"]["backbones"]
    assert [(r["backbone"], r["input"]) for r in rows] == [("small_tsm", "rgb"), ("small_tsm", "pwtp"),
                                                           ("small2d", "rgb"), ("small2d", "pwtp")]
    assert rows[0]["acc_unbiased"] == one["s0"]["runs"][0]["results"]["unbiased"]["rgb"]["accuracy"]
    assert rows[3]["acc_biased"] == one["bb"]["runs"][0]["results"]["biased"]["pwtp"]["accuracy"]
    assert {"report.md", "da_frames.png", "leakage_vs_accuracy.png"} <= {p.name for p in out.iterdir()}
    assert "merged from" in (out / "report.md").read_text()
    for bad, msg in (([tmp_path / "s0", tmp_path / "s0"], "already merged"), ([tmp_path / "nope"], "does not exist")):
        res = runner.invoke(app, ["demo", "--from", ",".join(map(str, bad)), "--out", str(tmp_path / "x")])
        assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output


def test_demo_study_frames_grid(tmp_path):
    out = tmp_path / "frames"
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--num-train", "32", "--num-test", "16",
                              "--epochs", "1", "--size", "16", "--inputs", "pwtp", "--study", "frames"])
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "results.json").read_text())["studies"]["frames"]
    assert [(r["T"], r["D"], r["S"]) for r in rows] == [(4, 1, 8), (4, 2, 8), (4, 3, 8), (8, 1, 4), (8, 2, 4), (8, 3, 4)]
    # twice the segments: more backbone FLOPs; a higher rank: more PWTP FLOPs
    g = {(r["T"], r["D"]): r["gflops"] for r in rows}
    assert g[(4, 1)] > g[(8, 1)] and g[(8, 3)] > g[(8, 1)]


def test_every_demo_run_is_a_valid_run_config():
    """A demo run is described by the same RunConfig as ``dynapp train`` (and passes its validation)."""
    from dynapp.apps.demo import JOINT_STRATEGIES, demo_config, run_config
    from dynapp.config import validate

    cfg = demo_config(quick=True)
    free = run_config(cfg, "pwtp_remove", out_dir="somewhere", seed=3)
    validate(free)
    assert (free.model.representation, free.model.representation_kwargs["static"]) == ("pwtp", "remove")
    assert free.seed == 3 and free.log.out_dir == "somewhere" and not free.checkpoint.enabled
    for strategy, alpha, normalize, backbone_grad in JOINT_STRATEGIES:
        validate(run_config(cfg, "pwtp", out_dir="unused", seed=0, strategy=strategy, alpha=alpha,
                            normalize=normalize, backbone_grad=backbone_grad))


def test_demo_jobs_give_the_same_results_as_one_process(tmp_path):
    """Runs trained two at a time in worker processes equal those trained one after another here."""
    tiny = ["--quick", "--num-train", "16", "--num-test", "16", "--epochs", "1", "--size", "16", "--inputs", "rgb,pwtp"]
    got = {}
    for jobs in ("1", "2"):
        res = runner.invoke(app, ["demo", *tiny, "--jobs", jobs, "--out", str(tmp_path / jobs), "--study", "frames"])
        assert res.exit_code == 0, res.output
        data = json.loads((tmp_path / jobs / "results.json").read_text())
        assert data["jobs"] == int(jobs)
        got[jobs] = ({s: {rep: (r["val_accuracy"], r["accuracy"], r["enopr"], r["log"][-1]["loss"]) for rep, r in res_.items()}
                      for s, res_ in data["runs"][0]["results"].items()}, data["studies"]["frames"])
    assert got["1"] == got["2"]
    res = runner.invoke(app, ["demo", *tiny, "--jobs", "0", "--out", str(tmp_path / "0")])
    assert res.exit_code == 1 and "--jobs must be >= 1" in res.output


def test_demo_from_adds_up_the_joint_study_of_parallel_seeds(tmp_path):
    tiny = ["--quick", "--num-train", "16", "--num-test", "16", "--epochs", "1", "--size", "16", "--inputs", "pwtp",
            "--study", "joint", "--jobs", "1"]
    for s in ("0", "1"):
        res = runner.invoke(app, ["demo", *tiny, "--seed", s, "--out", str(tmp_path / s)])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["demo", "--from", f"{tmp_path / '0'},{tmp_path / '1'}", "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "m" / "results.json").read_text())["studies"]["joint"]
    from dynapp.apps.demo.config import JOINT_STRATEGIES

    assert sorted({r["seed"] for r in rows}) == [0, 1] and len(rows) == 2 * 2 * len(JOINT_STRATEGIES)
    res = runner.invoke(app, ["demo", "--from", f"{tmp_path / '0'},{tmp_path / '0'}", "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "Traceback" not in res.output


def test_primary_statistic():
    import numpy as np

    from dynapp.apps.demo.compare import bootstrap_diff, primary_statistic

    # DA 5 points above the better baseline on every seed: diff 5 with a degenerate interval
    base = np.array([[50.0, 52.0, 48.0, 51.0, 49.0], [60.0, 61.0, 59.0, 62.0, 58.0]])
    diff, low, high = bootstrap_diff(base[1] + 5.0, base)
    assert diff == pytest.approx(5.0) and low <= 5.0 <= high and high - low < 6.0
    assert bootstrap_diff(base[1] + 5.0, base) == (diff, low, high)  # deterministic
    # noisy seeds: a wider interval that still contains the point estimate
    noisy = base[1] + np.array([-10.0, 12.0, 3.0, -6.0, 1.0])
    d2, l2, h2 = bootstrap_diff(noisy, base)
    assert l2 < d2 < h2 and h2 - l2 > high - low
    # the maximum is taken on each resample: never below the difference to either baseline alone
    runs = [{"seed": s, "results": {"unbiased": {"rgb": {"accuracy": base[0, s]}, "dynamic_image": {"accuracy": base[1, s]},
                                                 "pwtp": {"accuracy": noisy[s]}}}} for s in range(5)]
    joint = [{"seed": s, "setting": "unbiased", "strategy": "mgda", "accuracy": 20.0} for s in range(4)]
    rows = primary_statistic(runs, {"joint": joint}, ("unbiased",))
    by_arm = {r["arm"]: r for r in rows}
    assert by_arm["pwtp"]["baseline"] == "dynamic_image" and by_arm["pwtp"]["diff"] == pytest.approx(d2)
    # the reported interval is the paired t-interval of DA - the better baseline, per seed
    d = noisy - base[1]
    half = 2.776445 * d.std(ddof=1) / np.sqrt(5)
    assert (by_arm["pwtp"]["ci_low"], by_arm["pwtp"]["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert by_arm["pwtp"]["ci_high"] - by_arm["pwtp"]["ci_low"] > h2 - l2  # wider than the bootstrap's
    assert by_arm["pwtp mgda"]["seeds"] == 4 and by_arm["pwtp mgda"]["diff"] == pytest.approx(20.0 - base[1, :4].mean())
    # one seed: the difference, and no interval (nothing to resample)
    one = primary_statistic(runs[:1], {}, ("unbiased",))[0]
    assert one["diff"] == pytest.approx(noisy[0] - base[1, 0]) and one["ci_low"] is None and one["ci_high"] is None
    from dynapp.apps.demo.compare import primary_lines

    assert "one seed: no interval" in primary_lines([one])[0]


def test_budget_calibration_rule():
    """benchmarks/calibrate_budget.py: the first budget whose next one gains < 2 points, once complete."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "calibrate_budget.py"
    spec = importlib.util.spec_from_file_location("calibrate_budget", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def rows(best_by_budget, budgets=mod.BUDGETS):
        return [{"arm": arm, "epochs": b, "seed": s, "val_accuracy": best_by_budget[b] - 10.0 * i}
                for b in budgets for i, arm in enumerate(mod.ARMS) for s in mod.SEEDS]

    assert mod.choose_budget(rows({6: 70, 12: 80, 24: 81.5, 48: 90}))["budget"] == 12  # 12 -> 24 gains < 2
    assert mod.choose_budget(rows({6: 70, 12: 80, 24: 85, 48: 86}))["budget"] == 24
    assert mod.choose_budget(rows({6: 70, 12: 80, 24: 85, 48: 90}))["budget"] == 48
    partial = rows({6: 70, 12: 80, 24: 85, 48: 86})[:-1]  # one run of 48 epochs missing
    assert mod.choose_budget(partial)["best"][48] is None and mod.choose_budget(partial)["budget"] is None
    assert mod.choose_budget(rows({6: 70, 12: 80, 24: 85}, budgets=(6, 12, 24)))["budget"] is None


def test_joint_summary_means_over_seeds():
    from dynapp.apps.demo.report import joint_summary

    rows = [{"seed": s, "setting": st, "strategy": n, "val_accuracy": v + s, "accuracy": v - s, "alpha_end": 0.5,
             "static_share": 0.1, "enopr": 0.6} for n, v in (("mgda", 20.0), ("separate", 40.0))
            for st in ("unbiased", "biased") for s in range(3)]
    out = joint_summary(rows)
    assert [(r["strategy"], r["setting"]) for r in out] == [("mgda", "unbiased"), ("mgda", "biased"),
                                                           ("separate", "unbiased"), ("separate", "biased")]
    assert out[0]["val"] == pytest.approx(21.0) and out[0]["test"] == pytest.approx(19.0)
    assert out[0]["val_sd"] == pytest.approx(1.0) and out[0]["seeds"] == 3 and out[0]["alpha_end"] == 0.5


def test_separate_gives_the_recogniser_the_whole_budget(tmp_path):
    """Under separate, PWTP trains alone for epochs // 4 epochs and then the recogniser for all the epochs."""
    from dynapp.apps.demo import DemoConfig, QUICK, build_demo_data, train_and_evaluate
    from dynapp.apps.demo.config import run_config

    cfg = DemoConfig(**{**QUICK, "epochs": 4, "num_train": 16, "batch_size": 8, "num_test": 8, "size": 16})
    sep = run_config(cfg, "pwtp", out_dir=tmp_path, seed=0, strategy="separate")
    assert (sep.optim.epochs, sep.joint.separate_epochs) == (5, 1)
    assert run_config(cfg, "pwtp", out_dir=tmp_path, seed=0).optim.epochs == 4
    assert run_config(cfg, "rgb", out_dir=tmp_path, seed=0, strategy="separate").optim.epochs == 4
    train_sets, test = build_demo_data(replace(cfg, settings=("unbiased",)), 0)
    r = train_and_evaluate(cfg, "pwtp", train_sets["unbiased"], test, out_dir=tmp_path / "sep", seed=0,
                           strategy="separate")
    recogniser = [row for row in r["log"] if not math.isnan(row["rec_loss"])]
    assert r["steps"] == 5 * 2 and len(recogniser) == 4 * 2  # 2 steps per epoch
