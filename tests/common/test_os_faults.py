"""Faults the surroundings cause: what the operating system refuses (disk full, read-only, missing folder), Ctrl-C,
what killed writers leave behind, flags that cannot fit in memory, files that are not checkpoints, --resume with
flags it would not apply, and a bad validation file: each ends in one line naming the path or flag, nothing lost.

Disk-full and read-only cases use a real tmpfs (mounted here, which needs root: the case is skipped elsewhere)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backbone.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # processes and training runs: not in `make check`'s fast lane

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "tests" / "toy_task.py"
TINY_SSDLITE = [
    "--image-size",
    "128",
    "--width-mult",
    "0.35",
    "--epochs",
    "1",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--no-progress",
    "--device",
    "cpu",
    "--exist-ok",
]


def run(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def toy(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    return run(str(TOY), "--project", str(tmp_path), "--workers", "0", "--no-progress", "--device", "cpu", *flags)


# The scripts `run` starts, by module: `call` runs their main(argv) in this process instead.
SCRIPTS = {
    "train/ssdlite.py": "train.ssdlite",
    "train/deeplab.py": "train.deeplab",
    "eval/coco_map.py": "eval.coco_map",
    "eval/voc_miou.py": "eval.voc_miou",
    str(TOY): "toy_task",
}


def call(capsys, *args: str) -> subprocess.CompletedProcess:
    """What `run(*args)` would report (exit status, stdout, stderr), with the entry point's main(argv) called in this
    process: a new Python costs 8-10 s of imports, and run_cli's one-line errors and exit statuses are the same in
    either (each entry point family keeps one real-subprocess check of them below)."""
    module, argv = (args[1], args[2:]) if args[0] == "-m" else (SCRIPTS[args[0]], args[1:])
    main = importlib.import_module(module).main
    capsys.readouterr()
    try:
        main(list(argv))
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), status, captured.out, captured.err)


def toy_in_process(capsys, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    return call(
        capsys, str(TOY), "--project", str(tmp_path), "--workers", "0", "--no-progress", "--device", "cpu", *flags
    )


def one_error_line(result: subprocess.CompletedProcess, status: int = 2) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len([line for line in lines if line.startswith("error:")]) == 1, result.stderr[-3000:]
    return next(line for line in lines if line.startswith("error:"))


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs of the given size (KiB), read-only or not; unmounted afterwards."""
    mounts = []

    def mount(kib: int, read_only: bool = False) -> Path:
        point = tmp_path / f"fs{len(mounts)}"
        point.mkdir()
        options = f"size={kib}k" + (",ro" if read_only else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True).returncode:
            pytest.skip("mounting a tmpfs needs root (and a kernel that lets this sandbox do it)")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_a_full_disk_says_disk_full_and_leaves_nothing_half_written(tmp_path, tmpfs, synthetic_root, capsys):
    disk = tmpfs(1024)  # 1 MiB: the run folder and its logs fit, a 10 MB checkpoint does not
    result = call(
        capsys,
        "train/ssdlite.py",
        "--data-root",
        str(synthetic_root),
        "--project",
        str(disk),
        "--name",
        "s",
        *TINY_SSDLITE,
    )
    line = one_error_line(result)
    assert line.startswith(f"error: disk full writing to {disk / 's'} (No space left on device)"), line
    assert "nothing was saved yet" in line  # the first save is the one that failed: no last.pt to promise
    assert not list((disk / "s").glob("*.pt")) and not list((disk / "s").glob(".*.tmp*"))


@pytest.mark.parametrize("case", ["project", "cache", "cache_is_a_file", "video_out"])
def test_read_only_and_misplaced_folders_are_one_line_naming_the_path(
    case, tmp_path, tmpfs, synthetic_root, capsys, monkeypatch
):
    read_only = tmpfs(64, read_only=True)
    if case == "project":
        result = call(
            capsys,
            "train/ssdlite.py",
            "--data-root",
            str(synthetic_root),
            "--project",
            str(read_only / "runs"),
            *TINY_SSDLITE,
        )
        assert f"{read_only / 'runs'}: read-only file system" in one_error_line(result)
        return
    video = tmp_path / "still.png"
    video.write_bytes(_png())  # a small image is a one-frame source
    cache = {"cache": read_only, "cache_is_a_file": tmp_path / "not_a_folder"}.get(case, tmp_path / "cache")
    if case == "cache_is_a_file":
        cache.write_text("a file where the cache folder should be")
    out = read_only / "annotated.png" if case == "video_out" else tmp_path / "annotated.png"
    demo = ["-m", "demo.video", "--source", str(video), "--det", "ssdlite_pedestrian", "--out", str(out), "--quiet"]
    if case == "cache":  # demo.video's real-subprocess check: $MNV2_CACHE from the environment it starts with
        result = run(*demo, env={"MNV2_CACHE": str(cache)})
    else:
        monkeypatch.setenv("MNV2_CACHE", str(cache))
        result = call(capsys, *demo)
    line = one_error_line(result)
    where = out if case == "video_out" else cache
    assert str(where) in line and ("read-only" in line or "not a folder" in line or "in the way" in line), line


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), (90, 120, 150)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_run_folder_deleted_mid_run_is_named(tmp_path, capsys):
    line = one_error_line(
        toy_in_process(capsys, tmp_path, "--name", "gone", "--epochs", "2", "--delete-run-at-step", "3")
    )
    assert f"the run folder {tmp_path / 'gone'} was removed or moved while training" in line


def test_flags_that_cannot_fit_in_memory_are_refused_before_a_run_folder_exists(tmp_path, synthetic_root, capsys):
    line = one_error_line(
        call(
            capsys,
            "train/ssdlite.py",
            "--data-root",
            str(synthetic_root),
            "--project",
            str(tmp_path),
            "--name",
            "huge",
            "--image-size",
            "100000",
            "--width-mult",
            "0.35",
            "--workers",
            "0",
            "--device",
            "cpu",
        )
    )
    assert "--image-size 100000 and --batch-size 32 per process need about" in line and "GiB" in line, line
    assert not (tmp_path / "huge").exists()


def test_ctrl_c_once_saves_and_exits_130_in_one_line(tmp_path):
    result = toy(tmp_path, "--name", "c", "--epochs", "2", "--ctrl-c-at-step", "5")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[-1].startswith(
        f"SIGINT: saved {tmp_path / 'c' / 'last.pt'} at epoch 1, step 5; continue with --resume"
    )
    assert load_checkpoint(tmp_path / "c" / "last.pt")["step_in_epoch"] == 5


def test_a_second_ctrl_c_stops_at_once_in_one_line(tmp_path):
    result = toy(tmp_path, "--name", "cc", "--epochs", "2", "--ctrl-c-twice-at-step", "3")
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("interrupted by Ctrl-C")


def test_ctrl_c_during_export_is_one_line_and_writes_nothing(tmp_path):
    """A real SIGINT, sent by the process to itself right after the ONNX file is written under its temporary name
    (so the test does not depend on timing)."""
    from ssdlite import SSDLITE320_VOC, build_ssdlite, save_ssdlite

    checkpoint = save_ssdlite(build_ssdlite(SSDLITE320_VOC.derive(width_mult=0.35), num_classes=3), tmp_path / "m.pt")
    script = (
        "import os, signal, sys; import tools.export_formats as f; write = f.write_onnx\n"
        "def interrupted(*a, **k):\n    write(*a, **k); os.kill(os.getpid(), signal.SIGINT)\n"
        "f.write_onnx = interrupted\nimport tools.export; sys.exit(tools.export.main(sys.argv[1:]))"
    )
    result = run("-c", script, str(checkpoint), "--no-verify")
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "interrupted by Ctrl-C: every file written so far is complete (files are written whole or not at all)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no .onnx, no temporary


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    from common.files import write_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".m.onnx.{int(dead.stdout)}-0badc0de.tmp.onnx"  # a kill -9 during an export
    left.write_bytes(b"half a file")
    alive = tmp_path / f".m.onnx.{os.getpid()}-c0ffee00.tmp.onnx"  # a writer still at work: kept
    alive.write_bytes(b"in progress")
    write_atomic(tmp_path / "m.onnx", b"done")
    assert not left.exists() and alive.exists() and (tmp_path / "m.onnx").read_bytes() == b"done"


def test_nan_in_the_first_epoch_does_not_promise_a_last_pt(tmp_path, capsys):
    result = toy_in_process(capsys, tmp_path, "--name", "nan", "--nan-at-step", "2")
    line = one_error_line(result, status=3)
    assert "nothing was saved yet" in line and "still holds" not in line and not (tmp_path / "nan" / "last.pt").exists()


@pytest.mark.parametrize(
    "entry",
    [
        ["train/ssdlite.py", "--weights"],
        ["eval/coco_map.py", "--data", "synthetic", "--weights"],
        ["-m", "tools.export"],
        ["-m", "demo.video", "--det"],
    ],
)
def test_a_text_file_as_weights_is_named_as_such_in_every_entry_point(entry, tmp_path, capsys):
    if "demo.video" in entry:
        (tmp_path / "x.png").write_bytes(_png())
        entry = [*entry[:2], "--source", str(tmp_path / "x.png"), "--out", str(tmp_path / "y.png"), *entry[2:]]
    # train/ssdlite.py as a real `python script.py` process: the training family's end-to-end one-line check
    result = run(*entry, "/etc/passwd") if entry[0] == "train/ssdlite.py" else call(capsys, *entry, "/etc/passwd")
    line = one_error_line(result)
    assert "/etc/passwd: a text file, not a PyTorch checkpoint" in line, line


def test_a_refused_pickle_names_the_global_and_never_advises_weights_only_false(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    evil = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, evil)
    result = call(capsys, "eval/voc_miou.py", "--weights", str(evil), "--data", "synthetic")
    line = one_error_line(result)
    assert "asks for the Python global posix.system" in line and "nothing in it ran" in line
    assert "weights_only" not in result.stderr and "pwned" not in result.stdout


def test_a_segmenter_name_given_to_the_detection_evaluator_is_named_as_such(capsys):
    line = one_error_line(call(capsys, "eval/coco_map.py", "--weights", "deeplab_coral_voc", "--data", "synthetic"))
    assert "deeplab_coral_voc: a weights name that holds a Mobile DeepLabv3 segmenter" in line, line
    assert "eval/voc_miou.py" in line


def test_resume_refuses_flags_it_would_not_apply_and_takes_moved_data(tmp_path, synthetic_root, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    common = [
        "train/deeplab.py",
        "--project",
        str(tmp_path),
        "--name",
        "r",
        "--crop-size",
        "64",
        "--width-mult",
        "0.35",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
        "--exist-ok",
    ]
    first = call(capsys, *common, "--data-root", str(data), "--epochs", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    last = tmp_path / "r" / "last.pt"
    line = one_error_line(call(capsys, "train/deeplab.py", "--resume", str(last), "--epochs", "3", "--lr", "0.5"))
    assert "--epochs 3 (the run has 1), --lr 0.5 (the run has 0.01) would not apply" in line, line
    moved = tmp_path / "moved"
    data.rename(moved)
    again = call(capsys, "train/deeplab.py", "--resume", str(last), "--data-root", str(moved), "--no-progress")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"note: --data-root: {data} → {moved} (the data moved" in again.stdout


def test_a_truncated_validation_image_stops_the_run_before_it_trains(tmp_path, synthetic_root, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    victim = sorted((data / "coco" / "val").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    result = call(
        capsys, "train/ssdlite.py", "--data-root", str(data), "--project", str(tmp_path), "--name", "v", *TINY_SSDLITE
    )
    line = one_error_line(result)
    assert str(victim) in line and "truncated" in line, line
    assert "epoch 1/1" not in result.stderr and not (tmp_path / "v").exists()


def test_a_damaged_cache_file_is_converted_again_with_a_note(tmp_path, monkeypatch, capsys):
    from deeplab_mobile import Segmenter
    from deeplab_mobile.named_weights import DEEPLAB_WEIGHTS

    monkeypatch.setenv("MNV2_CACHE", str(tmp_path))
    entry = next(e for e in DEEPLAB_WEIGHTS if e.name == "deeplab_picamera2_257")
    first = Segmenter.from_pretrained(entry.name)
    assert json.loads(entry.digests_path.read_text())["source"] == entry.source.digest
    data = bytearray(entry.checkpoint_path.read_bytes())
    data[-2000:-1000] = bytes(1000)  # 1000 bytes of a tensor's data zeroed: still loads, silently wrong
    entry.checkpoint_path.write_bytes(bytes(data))
    capsys.readouterr()
    again = Segmenter.from_pretrained(entry.name)
    assert "its bytes no longer match the digest recorded when it was written (damaged?)" in capsys.readouterr().err
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values(), strict=True)
    )


def test_a_download_that_is_not_the_published_file_is_refused(tmp_path, monkeypatch):
    from common.errors import WeightsError
    from ssdlite.named_weights import SSDLITE_TF_COCO

    monkeypatch.setenv("MNV2_CACHE", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / SSDLITE_TF_COCO.source.filename).write_bytes(b"an HTML error page, say")
    with pytest.raises(WeightsError, match=r"sha256:[0-9a-f]{64}, but ssdlite_tf_coco needs sha256:542445cc"):
        SSDLITE_TF_COCO.file()
    assert SSDLITE_TF_COCO.source.url.startswith("https://")
