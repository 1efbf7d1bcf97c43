"""Faults a real cluster causes, on the toy task (augmented samples, two DataLoader workers): kill -9 at random
points then resume, SIGTERM to the whole process group, two runs started with one name."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backbone.checkpoint import load_checkpoint

TOY = Path(__file__).resolve().parent / "toy_task.py"
EPOCHS, STEPS_PER_EPOCH = 5, 8  # 64 samples, batch 8
RUN = ["--epochs", str(EPOCHS), "--log-interval", "1", "--workers", "2"]


def command(tmp_path: Path, *flags: str) -> list[str]:
    return [sys.executable, str(TOY), "--project", str(tmp_path), "--no-progress", "--device", "cpu", *flags]


def toy(tmp_path: Path, *flags: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(tmp_path, *flags),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        **kwargs,
    )


def max_difference(a: Path, b: Path) -> float:
    """Largest absolute difference over the model and EMA tensors of two checkpoints."""
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    pairs = [(ca[part][k], cb[part][k]) for part in ("model", "ema") for k in ca[part]]
    return max((x.double() - y.double()).abs().max().item() for x, y in pairs)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("straight")
    result = toy(root, "--name", "straight", *RUN)
    assert result.returncode == 0, result.stderr
    return root / "straight" / "last.pt"


@pytest.mark.slow
def test_kill9_at_ten_random_points_then_resume_ends_with_the_uninterrupted_weights(tmp_path, uninterrupted):
    rng, last = random.Random(14), tmp_path / "k" / "last.pt"
    for trial in range(10):
        done = load_checkpoint(last)["epoch"] * STEPS_PER_EPOCH if last.exists() else 0
        remaining = EPOCHS * STEPS_PER_EPOCH - done
        # a step before the end, or half-way through the 1st/2nd checkpoint write (not in the last epoch, where
        # the run could finish first): every trial is a real kill
        fault = (
            ["--kill9-in-save", str(rng.randint(1, 2))]
            if remaining > STEPS_PER_EPOCH and rng.random() < 0.3
            else ["--kill9-at-step", str(rng.randint(1, min(12, remaining - 1)))]
        )
        start = ["--resume", str(last)] if last.exists() else ["--name", "k", "--exist-ok", *RUN]
        result = toy(tmp_path, *start, *fault)
        assert result.returncode == -signal.SIGKILL, (trial, fault, result.stderr[-2000:])
    result = toy(tmp_path, "--resume", str(last))
    assert result.returncode == 0, result.stderr[-2000:]
    assert max_difference(uninterrupted, last) == 0.0
    assert not list(last.parent.glob(".*.tmp*"))  # a killed save's temporary is cleaned at the next start
    records = [json.loads(line) for line in (last.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert [r["epoch"] for r in records if "val/score" in r] == list(range(1, EPOCHS + 1))


def test_sigterm_to_the_process_group_checkpoints_and_resumes_exactly(tmp_path, uninterrupted):
    # its own session, so the signal reaches the run and its workers but not pytest
    result = toy(tmp_path, "--name", "g", *RUN, "--term-group-at-step", "12", start_new_session=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SIGTERM: saved" in result.stderr and "Traceback" not in result.stderr
    last = tmp_path / "g" / "last.pt"
    assert (load_checkpoint(last)["epoch"], load_checkpoint(last)["step_in_epoch"]) == (1, 4)
    resumed = toy(tmp_path, "--resume", str(last), "--workers", "0")  # another worker count: same samples
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert max_difference(uninterrupted, last) == 0.0


def test_two_runs_started_with_one_name_get_a_folder_each(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(
            command(tmp_path, "--name", "same", "--epochs", "1", "--workers", "0", "--seed", str(seed)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed in (1, 2)
    ]
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read()
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["same", "same2"]
    seeds = {json.loads((tmp_path / f / "args.json").read_text())["seed"] for f in folders}
    assert seeds == {1, 2}
    for folder in folders:  # each folder holds one run: its flags and its checkpoint agree
        args = json.loads((tmp_path / folder / "args.json").read_text())
        assert load_checkpoint(tmp_path / folder / "last.pt")["args"]["seed"] == args["seed"]
        assert len((tmp_path / folder / "metrics.jsonl").read_text().splitlines()) == 2


def test_exist_ok_is_refused_while_a_live_run_holds_the_folder(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen(
        command(tmp_path, "--name", "busy", "--epochs", "1000", "--workers", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lock = tmp_path / "busy" / ".lock"
        deadline = time.monotonic() + 120
        while (
            not (lock.is_file() and lock.read_text().strip()) and holder.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        second = toy(tmp_path, "--name", "busy", "--exist-ok", "--epochs", "1", "--workers", "0")
        assert holder.poll() is None, holder.stderr.read()  # still training while the second run was refused
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            (
                f"error: {tmp_path / 'busy'} is in use by a running training run (pid {holder.pid}): wait for it to "
                "finish, or choose another --name"
            )
        ]
    finally:
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=120) == 0  # checkpointed and left
    assert (
        toy(tmp_path, "--name", "busy", "--exist-ok", "--epochs", "1", "--workers", "0").returncode == 0
    )  # free again
