"""Faults a real cluster causes, on the toy task (augmented samples, two DataLoader workers): kill -9 at random
points then resume, SIGTERM to the whole process group, two runs started with one name."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from backbone.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # processes and training runs: not in `make check`'s fast lane

TOY = Path(__file__).resolve().parents[1] / "toy_task.py"
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


@contextlib.contextmanager
def one_thread():
    """torch on one thread, as the subprocesses' OMP_NUM_THREADS=1: in-process runs add in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def toy_in_process(capsys, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    """What `toy` reports, with toy_task.main called in this process: for runs that only finish or refuse a run
    (a new Python costs 8-10 s of imports); the faults themselves (kill -9, SIGTERM, live runs) stay real processes."""
    import toy_task

    capsys.readouterr()
    try:
        with one_thread():
            toy_task.main(["--project", str(tmp_path), "--no-progress", "--device", "cpu", *flags])
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(flags), status, captured.out, captured.err)


def assert_same_weights(expected: Path, actual: Path) -> None:
    """The model and EMA tensors of two checkpoints of the whole run are equal bit for bit. They come from other
    processes, but on one machine with one thread each (toy_task pins it): the same kernels add in the same order,
    and resume restores everything that decides a step (weights, optimiser, RNG, data order, step count). A float
    tolerance would let a repeated or skipped last step of the cosine schedule through; exact resume is the claim."""
    ca, cb = load_checkpoint(expected), load_checkpoint(actual)
    for part in ("model", "ema"):
        for key, value in ca[part].items():
            assert torch.equal(cb[part][key], value), (part, key, float((cb[part][key] - value).abs().max()))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    import toy_task

    root = tmp_path_factory.mktemp("straight")  # the reference run needs no process of its own
    with one_thread():
        run = toy_task.main(["--project", str(root), "--no-progress", "--device", "cpu", "--name", "straight", *RUN])
    return run / "last.pt"


@pytest.mark.slow
def test_kill9_at_random_points_then_resume_ends_with_the_uninterrupted_weights(tmp_path, uninterrupted, capsys):
    # Four seeded kills (each a real process, 8-10 s), two of each phase: mid-step, and half-way through a
    # checkpoint write (whose temporary the next start must clean). Ten random points repeated these phases.
    rng, last = random.Random(14), tmp_path / "k" / "last.pt"
    for trial, phase in enumerate(["step", "save", "step", "save"]):
        done = load_checkpoint(last)["epoch"] * STEPS_PER_EPOCH if last.exists() else 0
        remaining = EPOCHS * STEPS_PER_EPOCH - done
        # a step before the end, or half-way through the 1st/2nd checkpoint write (not in the last epoch, where
        # the run could finish first): every trial is a real kill
        assert phase == "step" or remaining > STEPS_PER_EPOCH, (trial, remaining)
        fault = (
            ["--kill9-in-save", str(rng.randint(1, 2))]
            if phase == "save"
            else ["--kill9-at-step", str(rng.randint(1, min(12, remaining - 1)))]
        )
        start = ["--resume", str(last)] if last.exists() else ["--name", "k", "--exist-ok", *RUN]
        result = toy(tmp_path, *start, *fault)
        assert result.returncode == -signal.SIGKILL, (trial, fault, result.stderr[-2000:])
    result = toy_in_process(capsys, tmp_path, "--resume", str(last))  # finishing needs no process of its own
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_weights(uninterrupted, last)
    assert not list(last.parent.glob(".*.tmp*"))  # a killed save's temporary is cleaned at the next start
    records = [json.loads(line) for line in (last.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert [r["epoch"] for r in records if "val/score" in r] == list(range(1, EPOCHS + 1))


@pytest.mark.numeric
def test_sigterm_to_the_process_group_checkpoints_and_resumes_exactly(tmp_path, uninterrupted, capsys):
    # its own session, so the signal reaches the run and its workers but not pytest
    result = toy(tmp_path, "--name", "g", *RUN, "--term-group-at-step", "12", start_new_session=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SIGTERM: saved" in result.stderr and "Traceback" not in result.stderr
    last = tmp_path / "g" / "last.pt"
    assert (load_checkpoint(last)["epoch"], load_checkpoint(last)["step_in_epoch"]) == (1, 4)
    # in this process (the SIGTERM above is the real one): another worker count, same samples
    resumed = toy_in_process(capsys, tmp_path, "--resume", str(last), "--workers", "0")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(uninterrupted, last)


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


def test_exist_ok_is_refused_while_a_live_run_holds_the_folder(tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen(
        command(tmp_path, "--name", "busy", "--epochs", "1000", "--workers", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lock, metrics = tmp_path / "busy" / ".lock", tmp_path / "busy" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        # until it trains (a metrics line: its SIGTERM handler is in place), not only holds the lock
        while (
            not (lock.is_file() and lock.read_text().strip() and metrics.is_file() and metrics.read_text().strip())
            and holder.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        # the live holder is a real process; the refused run may be this one
        second = toy_in_process(capsys, tmp_path, "--name", "busy", "--exist-ok", "--epochs", "1", "--workers", "0")
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
    again = toy_in_process(capsys, tmp_path, "--name", "busy", "--exist-ok", "--epochs", "1", "--workers", "0")
    assert again.returncode == 0, again.stderr[-2000:]  # free again
