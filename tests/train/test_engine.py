"""The shared training engine, on a toy task: outputs, signal → checkpoint → exact resume, NaN guard,
and DDP under torchrun matching one process on the same global batch."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from toy_task import trained_close

from backbone.checkpoint import load_checkpoint, save_checkpoint
from train.optim import lr_factor, parameter_groups

pytestmark = pytest.mark.slow  # processes and training runs: not in `make check`'s fast lane

TOY = Path(__file__).resolve().parents[1] / "toy_task.py"
STEPS_PER_EPOCH = 8  # 64 samples, batch 8


def toy(tmp_path: Path, *flags: str, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}"]
        if torchrun
        else [sys.executable]
    )
    cmd = [
        *launcher,
        str(TOY),
        "--project",
        str(tmp_path),
        "--workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
        *flags,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def toy_in_process(capsys, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    """What `toy` reports (exit status, stdout, stderr), with toy_task.main called in this process (run_toy below):
    a new Python costs 8-10 s of imports. Signals, torch.compile and torchrun keep real processes."""
    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses' OMP_NUM_THREADS=1: the same kernels add in the same order
    try:
        run_toy(tmp_path, *flags)
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(flags), status, captured.out, captured.err)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_a_run_writes_the_result_folder(tmp_path, capsys):
    result = toy_in_process(capsys, tmp_path, "--name", "a", "--epochs", "2")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "a"
    for name in ("last.pt", "best.pt", "args.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val/score" in r] == [1, 2]
    assert json.loads((run / "args.json").read_text())["epochs"] == 2
    # A second run with the same name goes to a new folder instead of overwriting.
    assert toy_in_process(capsys, tmp_path, "--name", "a", "--epochs", "1").returncode == 0
    assert (tmp_path / "a2" / "last.pt").is_file()


@pytest.mark.numeric
def test_sigterm_checkpoints_and_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    straight = toy_in_process(capsys, tmp_path, "--name", "straight", "--epochs", "3")
    assert straight.returncode == 0, straight.stderr
    interrupted = toy(tmp_path, "--name", "cut", "--epochs", "3", "--kill-at-step", "11")
    assert interrupted.returncode == 0, interrupted.stderr
    assert "SIGTERM: saved" in interrupted.stderr and "--resume" in interrupted.stderr
    ckpt = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 3)  # 8 steps per epoch: stopped after step 11
    # the SIGTERM above is a real process's; the straight run and the resume run in this one
    resumed = toy_in_process(capsys, tmp_path, "--resume", str(tmp_path / "cut" / "last.pt"))
    assert resumed.returncode == 0, resumed.stderr
    # Bit for bit: one machine, one thread per process (toy_task pins it), so the same kernels in the same order;
    # resume restores everything that decides a step, and exact resume is what it promises.
    a, b = weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(b[key], a[key]) for key in a)
    ema_a = load_checkpoint(tmp_path / "straight" / "last.pt")["ema"]
    ema_b = load_checkpoint(tmp_path / "cut" / "last.pt")["ema"]
    assert all(torch.equal(ema_b[key], ema_a[key]) for key in ema_a)


# Not among the numeric reruns: Inductor writes its own kernels for the CPU it finds, whatever ATEN_CPU_CAPABILITY
# says, and under ATEN_CPU_CAPABILITY=default their C++ does not compile ("'at::vec' has not been declared",
# torch 2.14).
def test_compile_trains_the_same_weights_and_saves_plain_checkpoints(tmp_path, capsys):
    eager = toy_in_process(capsys, tmp_path, "--name", "eager", "--epochs", "1")
    # its own process: torch.compile's caches and compiler stay out of pytest's
    compiled = toy(tmp_path, "--name", "compiled", "--epochs", "1", "--compile")
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr
    a, b = weights(tmp_path / "eager" / "last.pt"), weights(tmp_path / "compiled" / "last.pt")
    assert a.keys() == b.keys()  # no torch.compile "_orig_mod." prefixes: the checkpoint loads into a plain model
    for key in a:  # the compiled kernels fuse and add in their own order
        torch.testing.assert_close(b[key], a[key], **trained_close(STEPS_PER_EPOCH, a[key]))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, capsys):
    assert toy_in_process(capsys, tmp_path, "--name", "n", "--epochs", "1").returncode == 0
    last = tmp_path / "n" / "last.pt"
    before = last.read_bytes()
    result = toy_in_process(capsys, tmp_path, "--name", "n", "--exist-ok", "--epochs", "2", "--nan-at-step", "3")
    assert result.returncode == 3
    assert "loss became nan at epoch 1, step 3" in result.stderr and "Traceback" not in result.stderr
    assert last.read_bytes() == before


def test_resume_of_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    result = toy_in_process(capsys, tmp_path, "--resume", str(tmp_path / "nope" / "last.pt"))
    assert result.returncode != 0
    assert "nope/last.pt: no such file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.numeric
def test_torchrun_two_processes_match_one_process_on_the_same_global_batch(tmp_path, capsys):
    one = toy_in_process(capsys, tmp_path, "--name", "one", "--epochs", "2", "--ema-decay", "0")
    two = toy(tmp_path, "--name", "two", "--epochs", "2", "--ema-decay", "0", torchrun=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt")
    for key in a:  # each process adds its half of the batch, then the all-reduce adds the halves
        torch.testing.assert_close(b[key], a[key], **trained_close(2 * STEPS_PER_EPOCH, a[key]))


def test_no_weight_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    decay, no_decay = parameter_groups(model, 4e-5)
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {4, 2} and {p.ndim for p in no_decay["params"]} == {1}


@pytest.mark.parametrize("schedule, end", [("cosine", 0.0), ("poly", 0.0)])
def test_schedules_warm_up_then_decay(schedule, end):
    factors = [lr_factor(s, 100, 10, schedule) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert factors[100] == pytest.approx(end)


# --------------------------------------------------------------------------- bad input, in-process


def run_toy(tmp_path: Path, *flags: str) -> Path:
    """The toy entry point in this process (fast: no interpreter start); SystemExit on errors, as the CLI."""
    import toy_task

    return toy_task.main(["--project", str(tmp_path), "--workers", "0", "--no-progress", "--device", "cpu", *flags])


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--device", "nonsense", "--device nonsense: expected auto, cpu, cuda or cuda:N"),
        ("--batch-size", "0", "--batch-size must be at least 1, got 0"),
        ("--batch-size", "1", "--batch-size 1: BatchNorm needs at least 2 samples per batch"),
        ("--lr", "-1", "--lr must be a positive number, got -1.0"),
        ("--workers", "-1", "--workers must be 0 or more, got -1"),
        ("--log-interval", "0", "--log-interval must be at least 1"),
        ("--ema-decay", "2", "--ema-decay must be in [0, 1)"),
        ("--bn-recalibration", "-1", "--bn-recalibration must be 0 (off) or more, got -1"),
        ("--epochs", "-1", "--epochs must be at least 1, got -1"),
        ("--eval-interval", "0", "--eval-interval must be at least 1"),
    ],
)
def test_bad_training_flags_are_one_line_errors(tmp_path, capsys, flag, value, says):
    with pytest.raises(SystemExit) as stop:
        run_toy(tmp_path, "--name", "f", flag, value)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {says}"), err
    assert not (tmp_path / "f").exists()  # checked before anything is written


def test_bad_resume_files_are_one_line_errors(tmp_path, capsys):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 20)
    weights_only = tmp_path / "weights.pt"
    torch.save({"arch": "toy", "config": {}, "model": {}}, weights_only)  # a model file, not a training state
    for path, says in ((noise, "not a PyTorch checkpoint"), (weights_only, "not a training checkpoint")):
        with pytest.raises(SystemExit) as stop:
            run_toy(tmp_path, "--resume", str(path))
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
        assert "weights_only=False" not in err and "weights_only` set to `False" not in err


def test_a_fresh_run_removes_what_a_killed_save_left_and_restarts_its_metrics(tmp_path):
    run = run_toy(tmp_path, "--name", "s", "--epochs", "1", "--log-interval", "1")
    stale = run / ".last.pt.deadbeef.tmp.pt"
    stale.write_bytes(b"PK half a checkpoint")
    run_toy(tmp_path, "--name", "s", "--exist-ok", "--epochs", "1", "--log-interval", "1")
    assert not stale.exists()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 8]  # one run's rows, not two runs' interleaved


def test_a_full_disk_says_what_survived(tmp_path, capsys, monkeypatch):
    import errno

    import train.engine

    saves = []

    def save(obj, path):
        saves.append(path.name)
        if saves.count("last.pt") > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_checkpoint(obj, path)

    monkeypatch.setattr(train.engine, "save_checkpoint", save)
    with pytest.raises(SystemExit) as stop:
        run_toy(tmp_path, "--name", "d", "--epochs", "2", "--ema-decay", "0")
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err[-1].startswith("error: disk full writing to"), err
    assert f"--resume {tmp_path / 'd' / 'last.pt'}" in err[-1]
    assert load_checkpoint(tmp_path / "d" / "last.pt")["epoch"] == 1  # the first save survived whole


def test_a_dataset_error_in_a_worker_is_the_same_one_line_error(tmp_path, capsys):
    messages = []
    for workers in ("0", "2"):
        flags = ("--name", f"w{workers}", "--epochs", "1", "--corrupt-at-index", "5", "--workers", workers)
        # in this process without workers; with them, a real process whose DataLoader workers raise the error
        result = toy_in_process(capsys, tmp_path, *flags) if workers == "0" else toy(tmp_path, *flags)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        messages.append(result.stderr.strip().splitlines()[-1])
    assert messages[0] == messages[1] == "error: toy/5.jpg: cannot decode image. Replace or remove the file"
