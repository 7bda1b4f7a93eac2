"""Preemption: SIGTERM / SIGUSR1 sent to a real `dynapp train` finish the step, write a
checkpoint, print one line and exit 75; `checkpoint.resume=auto` continues to the same result."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from cluster_util import (
    ENV,
    assert_bitwise_equal,
    assert_same_rows,
    cli,
    final_model,
    read_csv,
    train_args,
    wait_for_rows,
    wait_for_text,
)
from dynapp.engine.checkpoint import load_checkpoint
from dynapp.engine.preempt import EXIT_PREEMPTED, StopSignals


def test_stop_signals_are_recorded_then_restored():
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as stop:
        assert not stop.should_stop()
        os.kill(os.getpid(), signal.SIGUSR1)  # handled in this thread before kill() returns
        assert stop.received == ["SIGUSR1"] and stop.should_stop() and stop.stopped
        err = stop.error(7, 12, "runs/x/checkpoints/last.pt")
        assert err.step == 7 and str(err) == (
            "preempted (SIGUSR1): stopped after step 7 of 12, checkpoint runs/x/checkpoints/last.pt; "
            "continue with --resume or checkpoint.resume=auto (exit code 75)")
    assert signal.getsignal(signal.SIGUSR1) is before


@pytest.mark.parametrize("sig,group", [(signal.SIGTERM, True), (signal.SIGUSR1, False), (signal.SIGINT, True)],
                         ids=["SIGTERM-to-the-process-group", "SIGUSR1-to-the-main-process",
                              "Ctrl-C-to-the-process-group"])
def test_signal_checkpoints_exits_75_and_resume_auto_continues(clips, reference, tmp_path, sig, group):
    # SIGTERM to the whole process group, as SLURM and `kill -TERM -PGID` do: the two DataLoader
    # workers get it too and must not die before the main process has written its checkpoint.
    run = tmp_path / "run"
    args = train_args(clips, run, "data.num_workers=2", "checkpoint.resume=auto")
    proc = subprocess.Popen(cli(*args, sleep_per_step=0.3), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, start_new_session=True)
    wait_for_rows(proc, run / "train_log.csv", 5)
    (os.killpg if group else os.kill)(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED == 75, err[-3000:]
    assert "Traceback" not in err and "error" not in err.lower()
    lines = [line for line in out.splitlines() if "preempted" in line]
    assert len(lines) == 1 and lines[0].startswith(f"preempted ({sig.name}): stopped after step ")
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    rows = read_csv(run / "train_log.csv")
    assert 5 <= ck["step"] < 12 and int(rows[-1]["step"]) == ck["step"]  # the step it was in, finished and saved
    assert f"stopped after step {ck['step']} of 12" in lines[0]
    resume = [line for line in out.splitlines() if line.startswith("resume with: ")]
    assert len(resume) == 1 and resume[0].startswith("resume with: dynapp train data.dataset=folder ")
    assert resume[0].endswith(" --resume") and f"log.out_dir={run}" in resume[0]
    if sig == signal.SIGINT:
        assert "Ctrl-C: the run stops after this step" in err
    if not group:
        return  # resuming is the same as after SIGTERM (and as after kill -9: tests/test_resume.py)

    done = subprocess.run(cli(*args), capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at step {ck['step']}" in done.stdout
    assert_bitwise_equal(final_model(reference), final_model(run))
    assert_same_rows(read_csv(reference / "train_log.csv"), read_csv(run / "train_log.csv"))


def test_a_second_ctrl_c_stops_at_once(clips, tmp_path):
    run = tmp_path / "run"
    args = train_args(clips, run, "data.num_workers=2")
    proc = subprocess.Popen(cli(*args, sleep_per_step=5), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, start_new_session=True)
    wait_for_rows(proc, run / "train_log.csv", 1)  # asleep after step 1, for 5 s
    os.killpg(proc.pid, signal.SIGINT)
    wait_for_text(proc, "Ctrl-C: the run stops after this step")
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "stopped at once (Ctrl-C)" in err
    assert len(read_csv(run / "train_log.csv")) == 1  # the step it was asleep after: no further step
