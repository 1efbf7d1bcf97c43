"""Both training entry points end to end on a tiny synthetic set: a run folder whose checkpoints the evaluation
loaders and CLIs accept (and score the same), resume after --data-root, the skip policy's edge cases, exact
resume of augmented training, and one-line errors for bad flags and files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backbone.checkpoint import load_checkpoint
from deeplab_mobile.checkpoint import load_deeplab
from ssdlite.checkpoint import load_ssdlite
from train import deeplab, ssdlite
from train.resume import resumed_arguments, saved_arguments

COMMON = ["--epochs", "1", "--batch-size", "4", "--workers", "0", "--no-progress", "--device", "cpu", "--exist-ok"]
SMALL_SSDLITE = ["--image-size", "128", "--width-mult", "0.35"]


@pytest.fixture(scope="module")
def ssdlite_run(tmp_path_factory, synthetic_root) -> Path:
    project = tmp_path_factory.mktemp("ssdlite")
    return ssdlite.main(["--data-root", str(synthetic_root), "--project", str(project), "--name", "s", *COMMON])


@pytest.fixture(scope="module")
def deeplab_run(tmp_path_factory, synthetic_root) -> Path:
    project = tmp_path_factory.mktemp("deeplab")
    return deeplab.main(
        [
            "--data-root",
            str(synthetic_root),
            "--project",
            str(project),
            "--name",
            "d",
            "--crop-size",
            "96",
            "--width-mult",
            "0.35",
            *COMMON,
        ]
    )


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_ssdlite_trains_and_its_checkpoint_loads(ssdlite_run):
    model, ckpt = load_ssdlite(ssdlite_run / "best.pt")
    assert ckpt["class_names"] == ["background", "circle", "square", "triangle", "star", "ring"]
    assert model.num_classes == 6 and ckpt["epoch"] == 1
    assert any("val/AP50" in r for r in records(ssdlite_run)) and any(
        "train/box_loss" in r for r in records(ssdlite_run)
    )
    assert (ssdlite_run / "val" / "report.md").is_file()


def test_deeplab_trains_and_eval_scores_its_checkpoint_the_same(deeplab_run, synthetic_root, tmp_path):
    from eval import voc_miou

    model, _ = load_deeplab(deeplab_run / "best.pt")
    assert model.class_names[0] == "background" and model.num_classes == 6 and model.preset.width_mult == 0.35
    logged = next(r["val/mIoU"] for r in records(deeplab_run) if "val/mIoU" in r)
    out = voc_miou.main(
        [
            "--weights",
            str(deeplab_run / "best.pt"),
            "--data",
            "synthetic",
            "--data-root",
            str(synthetic_root),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--project",
            str(tmp_path),
            "--quiet",
            "--overlays",
            "0",
        ]
    )
    # the same checkpoint on the same validation images, in this process: the same pixels counted; 1e-6 is far below
    # one pixel's weight in an IoU (1 / its class's union) and far above float64 rounding
    assert json.loads((out / "metrics.json").read_text())["mIoU"] == pytest.approx(logged, abs=1e-6)


@pytest.mark.parametrize("head", ["ssdlite", "deeplab"])
def test_resume_of_a_run_trained_with_data_root(head, ssdlite_run, deeplab_run, capsys):
    run, main = (ssdlite_run, ssdlite.main) if head == "ssdlite" else (deeplab_run, deeplab.main)
    assert main(["--resume", str(run / "last.pt"), "--workers", "0", "--no-progress"]) == run
    assert "resumed" in capsys.readouterr().err


DATA_KINDS = {
    "ssdlite": [
        ["--data", "synthetic", "--data-root", "/d/syn"],
        ["--data", "coco", "--data-root", "/d/coco"],
        ["--data", "voc", "--data-root", "/d/VOCdevkit"],
        [
            "--data",
            "custom",
            "--train-ann",
            "/a/t.json",
            "--train-images",
            "/a/t",
            "--val-ann",
            "/a/v.json",
            "--val-images",
            "/a/v",
        ],
    ],
    "deeplab": [
        ["--data", "synthetic", "--data-root", "/d/syn"],
        ["--data", "coco", "--data-root", "/d/coco"],
        ["--data", "voc", "--data-root", "/d/VOCdevkit", "--sbd-root", "/d/SBD"],
        ["--data", "custom", "--data-root", "/d/mine", "--num-classes", "5"],
    ],
}


@pytest.mark.parametrize("head", ["ssdlite", "deeplab"])
def test_resume_restores_the_flags_of_every_data_kind_with_their_types(head, tmp_path):
    parser = (ssdlite if head == "ssdlite" else deeplab).build_parser()
    for argv in DATA_KINDS[head]:
        original = parser.parse_args([*argv, "--project", str(tmp_path), "--epochs", "3"])
        ckpt = {
            "task": head,
            "model": {},
            "optimizer": {},
            "scheduler": {},
            "epoch": 1,
            "step_in_epoch": 0,
            "rng": {},
            "args": json.loads(json.dumps(saved_arguments(original))),
        }  # as args.json and last.pt keep them
        torch.save(ckpt, tmp_path / "last.pt")
        argv_resume = ["--resume", str(tmp_path / "last.pt")]
        resumed, moved = resumed_arguments(parser, parser.parse_args(argv_resume), head, argv_resume)
        assert vars(resumed) == {**vars(original), "resume": str(tmp_path / "last.pt")} and moved == [], argv


def test_the_other_heads_last_pt_is_refused_in_one_line(deeplab_run, capsys):
    with pytest.raises(SystemExit) as stop:
        ssdlite.main(["--resume", str(deeplab_run / "last.pt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert "a 'deeplab' training run's checkpoint, not a 'ssdlite' one; resume it with train/deeplab.py" in err[0]


@pytest.mark.parametrize(
    "main, flags, says",
    [
        (ssdlite.main, ["--image-size", "7"], "--image-size must be at least 32"),
        (ssdlite.main, ["--width-mult", "0"], "--width-mult must be a positive number, got 0.0"),
        (deeplab.main, ["--crop-size", "7"], "--crop-size must be at least 16"),
    ],
)
def test_bad_model_flags_are_one_line_errors(main, flags, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*flags, "--project", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {says}"), err


def corrupted_copy(root: Path, tmp_path: Path, count: int) -> Path:
    """A copy of the synthetic set whose first `count` training images are not images."""
    copy = Path(shutil.copytree(root, tmp_path / "data"))
    for image in sorted((copy / "coco" / "train").glob("*.jpg"))[:count]:
        image.write_bytes(b"not a jpeg")
    return copy


def test_a_skip_that_leaves_one_sample_drops_that_batch(synthetic_root, tmp_path, capsys):
    data = corrupted_copy(synthetic_root, tmp_path, 1)
    run = ssdlite.main(
        [
            "--data-root",
            str(data),
            "--project",
            str(tmp_path),
            "--name",
            "one",
            *SMALL_SSDLITE,
            "--skip-bad-samples",
            *COMMON,
            "--batch-size",
            "2",
        ]
    )
    out = capsys.readouterr()
    assert "epoch 1: dropped 1 batches" in out.err  # the batch the bad image shared; once more in recalibration:
    assert "skipped 2 samples (2 corrupt image)" in out.out
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def test_a_run_whose_every_image_is_skipped_stops_with_the_counts(synthetic_root, tmp_path, capsys):
    data = corrupted_copy(synthetic_root, tmp_path, 12)
    with pytest.raises(SystemExit) as stop:
        ssdlite.main(
            [
                "--data-root",
                str(data),
                "--project",
                str(tmp_path),
                "--name",
                "all",
                *SMALL_SSDLITE,
                "--skip-bad-samples",
                *COMMON,
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert err[-1].startswith("error: epoch 1: no training batch was usable (skipped 12 samples (12 corrupt image))")
    assert not (tmp_path / "all" / "best.pt").exists() and not (tmp_path / "all" / "last.pt").exists()


@pytest.mark.slow
def test_augmented_training_resumed_mid_epoch_ends_with_the_uninterrupted_weights(
    synthetic_root, tmp_path, monkeypatch
):
    flags = [
        "--data-root",
        str(synthetic_root),
        "--project",
        str(tmp_path),
        *SMALL_SSDLITE,
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--no-progress",
        "--device",
        "cpu",
        "--workers",
        "2",
    ]
    straight = ssdlite.main([*flags, "--name", "straight"])
    compute_loss, steps = ssdlite.SSDLiteTask.compute_loss, []

    def signalled_at_step_4(self, *args):
        steps.append(1)
        if len(steps) == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return compute_loss(self, *args)

    monkeypatch.setattr(ssdlite.SSDLiteTask, "compute_loss", signalled_at_step_4)
    cut = ssdlite.main([*flags, "--name", "cut"])
    assert (load_checkpoint(cut / "last.pt")["epoch"], load_checkpoint(cut / "last.pt")["step_in_epoch"]) == (1, 1)
    monkeypatch.setattr(ssdlite.SSDLiteTask, "compute_loss", compute_loss)
    ssdlite.main(["--resume", str(cut / "last.pt"), "--workers", "0", "--no-progress"])  # another worker count
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(cut / "last.pt")
    worst = max((a[p][k].double() - b[p][k].double()).abs().max().item() for p in ("model", "ema") for k in a[p])
    assert worst == 0.0


@pytest.mark.parametrize("script", ["train/ssdlite.py", "train/deeplab.py"])
def test_missing_data_root_is_one_line(script, tmp_path, capsys):
    argv = ["--data", "coco", "--weights", "none", "--project", str(tmp_path)]
    if script == "train/ssdlite.py":  # in this process: a new Python costs 8-10 s of imports
        with pytest.raises(SystemExit) as stop:
            ssdlite.main(argv)
        assert stop.value.code != 0
        assert capsys.readouterr().err.strip().splitlines() == [
            "error: --data coco needs --data-root (the dataset folder)"
        ]
        return
    # train/deeplab.py as a real `python script.py` process: the one-line error end to end
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, script, *argv],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["error: --data coco needs --data-root (the dataset folder)"]
