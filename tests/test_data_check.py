"""`dynapp check-data`: every bad or too-short video reported with its reason; exit status."""

from __future__ import annotations

from typer.testing import CliRunner

from dynapp.cli import app
from dynapp.data.check import check_dataset
from dynapp.data.encode import ramp_frames, write_video


def _ucf(root, bad: bool):
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 Run\n2 Jump\n")
    (lists / "trainlist01.txt").write_text("Run/v_Run_g01_c01.avi 1\nJump/v_Jump_g01_c01.avi 2\n")
    (lists / "testlist01.txt").write_text("Run/v_Run_g02_c01.avi\n" + ("Jump/v_Jump_g02_c01.avi\n" if bad else ""))
    videos = root / "UCF-101"
    (videos / "Run").mkdir(parents=True)
    (videos / "Jump").mkdir(parents=True)
    write_video(videos / "Run/v_Run_g01_c01.avi", ramp_frames(40, 24, 32), codec="mpeg4")
    write_video(videos / "Jump/v_Jump_g01_c01.avi", ramp_frames(40, 24, 32), codec="mpeg4")
    write_video(videos / "Run/v_Run_g02_c01.avi", ramp_frames(12, 24, 32), codec="mpeg4")  # short
    if bad:
        (videos / "Jump/v_Jump_g02_c01.avi").write_bytes(b"")


def test_check_dataset_reports_bad_and_short_with_reasons(tmp_path):
    good = write_video(tmp_path / "good.mp4", ramp_frames(30, 24, 32))
    short = write_video(tmp_path / "short.mp4", ramp_frames(5, 24, 32))
    junk = tmp_path / "junk.mp4"
    junk.write_text("nope")
    long = write_video(tmp_path / "trunc.avi", ramp_frames(200, 16, 16, step=1), codec="mpeg4")
    data = long.read_bytes()
    movi = data.index(b"movi")
    long.write_bytes(data[: movi + (len(data) - movi) // 3])
    paths = [good, short, junk, long, tmp_path / "missing.mp4", good]
    results = check_dataset(paths, min_frames=16, progress=False)
    assert len(results) == 5  # duplicates once
    status = {r.path.name: (r.status, r.num_frames) for r in results}
    assert status == {"good.mp4": ("ok", 30), "short.mp4": ("short", 5), "junk.mp4": ("bad", None),
                      "trunc.avi": ("bad", None), "missing.mp4": ("bad", None)}
    reasons = {r.path.name: r.reason for r in results}
    assert "truncated" in reasons["trunc.avi"] and "missing" in reasons["missing.mp4"]
    # the quick scan still catches the truncation (the last frame does not decode)
    quick = check_dataset([long], min_frames=16, quick=True, progress=False)
    assert quick[0].status == "bad"


def test_cli_check_data_exit_status(tmp_path):
    runner = CliRunner()
    ok_root = tmp_path / "ok"
    _ucf(ok_root, bad=False)
    res = runner.invoke(app, ["check-data", "--dataset", "ucf101", "--root", str(ok_root), "--segments", "4",
                              "--frames", "4"])
    assert res.exit_code == 0, res.output
    assert "SHORT" not in res.output and "BAD" not in res.output  # counted, not listed, by default
    assert "1 shorter than S*T=16" in res.output and "--list-short" in res.output
    res = runner.invoke(app, ["check-data", "--dataset", "ucf101", "--root", str(ok_root), "--segments", "4",
                              "--frames", "4", "--list-short"])
    assert res.exit_code == 0, res.output
    assert "SHORT" in res.output and "v_Run_g02_c01.avi" in res.output and "BAD" not in res.output
    bad_root = tmp_path / "bad"
    _ucf(bad_root, bad=True)
    res = runner.invoke(app, ["check-data", "--dataset", "ucf101", "--root", str(bad_root), "--segments", "4",
                              "--frames", "4", "--workers", "1"])
    assert res.exit_code == 1
    assert "BAD" in res.output and "v_Jump_g02_c01.avi" in res.output and "empty" in res.output
    res = runner.invoke(app, ["check-data", "--dataset", "ucf101", "--root", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "Traceback" not in res.output and "classInd.txt" in res.output
