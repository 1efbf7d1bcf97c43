"""The one training engine both heads share: `train_main` (what `python train/<task>.py` does), the Trainer and
its loop, read top to bottom in `fit`.

A task (train/task.py) tells the engine how to build its model and data, compute its loss and evaluate; the
engine owns everything else: optimiser and schedule (train/optim.py), AMP on CUDA, channels_last, EMA, gradient
clipping, DDP + SyncBatchNorm under torchrun, `--compile`, exact resume from atomic checkpoints (train/resume.py,
train/data.py), SIGINT/SIGTERM, NaN/inf guards, and the run folder (train/run_folder.py).
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from backbone.checkpoint import save_checkpoint
from common.allocator import tune_allocator
from common.cli import run_cli
from common.distributed import all_reduce_sum, barrier, cleanup, gather_objects, init_distributed
from common.errors import Interrupted, TrainingDiverged, UserError
from datasets.errors import check_files
from train.batchnorm import freeze_batchnorm, recalibrate_batchnorm
from train.data import TrainingData
from train.flags import check_training_arguments
from train.optim import build_optimizer, build_scheduler, ramped_ema
from train.resume import (
    read_training_checkpoint,
    resumed_arguments,
    rng_state,
    saved_arguments,
    seed_everything,
    set_rng_state,
)
from train.run_folder import RunFolder
from train.task import Task


def train_main(
    parser: argparse.ArgumentParser,
    make_task: Callable[[argparse.Namespace], Task],
    task_name: str,
    argv: Sequence[str] | None,
    runtime_flags: Iterable[str] = (),
) -> Path:
    """What `python train/<task>.py` does: parse (or restore on --resume) the flags, build the task, train,
    summarise; user errors become one `error:` line and exit 2, divergence exit 3 (common.cli.run_cli).
    `runtime_flags`: destinations a resumed run takes from its command line besides train.resume.RUNTIME_FLAGS."""

    def body(args: argparse.Namespace) -> Path:
        args, moved = resumed_arguments(parser, args, task_name, argv, runtime_flags)
        for change in moved:
            print(f"note: {change} (the data moved; the run continues on the files at the new path)")
        task = make_task(args)
        run_dir = Trainer(task, args).fit()
        if task.skip is not None and task.skip.total:
            print(task.skip.summary())
        print(f"results in {run_dir}")
        return run_dir

    return run_cli(parser, argv, check_training_arguments, body)


# ---- --compile: whether the training forward runs under torch.compile
#
# Compiling costs a fixed time up front (inductor generates and builds C++ on the CPU, Triton kernels on CUDA) and
# pays only if each step then runs faster, over enough steps. `auto` (the default) follows the measurements in
# BENCHMARKS.md ("`--compile` on the CPU", `python -m bench.run --only ssdlite`): with torch 2.14 on the CPU a
# compiled SSDLite training step ran at 0.74-1.00× the eager step's speed (two runs), after 85-91 s of compiling,
# so it never pays and `auto` stays eager there. On CUDA (not measured yet: no GPU has been lent) `auto` compiles
# runs of at least AUTO_MIN_IMAGES["cuda"] images (epochs × training images), where a compile of a minute is small
# beside the run. `on` compiles anyway (and says so if no compiler is here).
AUTO_MIN_IMAGES = {"cuda": 100_000}  # one COCO epoch (118k images) and longer; CPU: never (above)


def backend_missing(device: torch.device) -> str | None:
    """Why inductor cannot compile for `device` here, or None when it can."""
    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "triton is not installed"
    compiler = os.environ.get("CXX", "g++")
    return None if shutil.which(compiler) else f"no C++ compiler ({compiler}) on PATH"


def compile_decision(choice: str, device: torch.device, planned_images: int) -> tuple[bool, str]:
    """(compile?, the reason, for the run's log)."""
    if choice == "off":
        return False, "off (--compile off)"
    missing = backend_missing(device)
    if choice == "on":
        if missing:
            raise UserError(
                f"--compile on: {missing}, so torch.compile cannot build kernels for {device.type}; "
                "install one, or pass --compile auto or off"
            )
        return True, "on (--compile on)"
    threshold = AUTO_MIN_IMAGES.get(device.type)
    if threshold is None:
        return False, f"auto → off (compiled {device.type} training steps measured slower than eager; BENCHMARKS.md)"
    if missing:
        return False, f"auto → off ({missing})"
    if planned_images < threshold:
        return False, f"auto → off ({planned_images:,} images planned, below the {threshold:,} where compiling pays)"
    return True, f"auto → on ({planned_images:,} images planned ≥ {threshold:,})"


# ---- SIGINT/SIGTERM: finish the step, checkpoint, exit (130 after Ctrl-C, 0 after SIGTERM). Schedulers (systemd,
# Slurm, Kubernetes) signal the whole process group; DataLoader workers ignore the signal
# (datasets.loading.init_worker), so only the main process acts.


@dataclass
class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next step boundary and exits."""

    signal_name: str | None = None
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# A training step's memory per input pixel of its batch, both heads (forward activations kept for the backward pass,
# gradients, the optimiser): 2.0-3.1 KB measured on the CPU (SSDLite at 160 and 320, DeepLab at 128 and 513), so the
# low end refuses only runs that cannot fit.
BYTES_PER_INPUT_PIXEL = 2000


def device_memory(device: torch.device) -> int:
    """Bytes a run on `device` can use at most: the GPU's memory, or the machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_step_fits(flags: str, batch: int, size: tuple[int, int], device: torch.device) -> None:
    """Refuse, before a run folder exists, flags whose training step cannot fit in the device's memory."""
    need, have = batch * size[0] * size[1] * BYTES_PER_INPUT_PIXEL, device_memory(device)
    if need > have:
        raise UserError(
            f"{flags} and --batch-size {batch} per process need about {need / 2**30:,.0f} GiB for a "
            f"training step (about {BYTES_PER_INPUT_PIXEL} bytes per input pixel), more than the "
            f"{have / 2**30:,.0f} GiB of {device}: use a smaller size or batch"
        )


def channels_last_inputs(module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: image batches enter a channels_last model in channels_last (else it runs NCHW kernels)."""
    return tuple(
        x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.ndim == 4 else x
        for x in inputs
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class Trainer:
    """Runs one training job for `task` with the shared flags in `args`."""

    def __init__(self, task: Task, args: argparse.Namespace) -> None:
        self.task, self.args = task, args
        self.dist = init_distributed(args.device)
        self.device = self.dist.device
        on_cuda = self.device.type == "cuda"
        self.amp = on_cuda if args.amp is None else args.amp
        if self.amp and not on_cuda:
            raise UserError("--amp needs CUDA; drop it or use --device cuda")
        if args.batch_size % self.dist.world_size:
            raise UserError(f"--batch-size {args.batch_size} does not split over {self.dist.world_size} processes")
        self.batch_per_process = args.batch_size // self.dist.world_size
        self.min_batch = 1 if args.frozen_bn else 2  # train-mode BatchNorm fails on a single sample
        if self.batch_per_process < self.min_batch:
            raise UserError(
                f"--batch-size {args.batch_size} over {self.dist.world_size} processes leaves "
                f"{self.batch_per_process} per process; BatchNorm needs 2: raise it or add --frozen-bn"
            )
        self.stop = StopRequest()
        self.folder: RunFolder | None = None  # rank 0 only
        self.validation_check = ""

    # ---- the loop

    def fit(self) -> Path:
        """Train to the last epoch (or a stop signal) and return the run folder."""
        args = self.args
        allocator = tune_allocator()  # before DataLoader workers fork, so they inherit it (BENCHMARKS.md)
        self._build()
        self.run_dir = self._open_run_folder()
        if args.resume:
            self._resume()
        if self.folder:
            self.folder.start_logs(
                self.position, {**saved_arguments(args), **self.task.run_record()}, self.evaluation_pending
            )
        if allocator:
            self._log(f"allocator: {allocator}")
        self._log(f"compile: {self.compile_decision}")
        if self.validation_check:
            self._log(self.validation_check)
        self._log(
            f"{self.task.name}: {self.steps_per_epoch} steps/epoch × {args.epochs} epochs, batch {args.batch_size} "
            f"on {self.dist.world_size} × {self.device}, amp {self.amp}, channels_last {args.channels_last} → {self.run_dir}"
        )
        self.stop.install()
        try:
            if self.evaluation_pending:  # a run stopped between an epoch's last step and its evaluation
                self._evaluate_and_save()
            while self.epoch < args.epochs:
                if not self._train_epoch():
                    return self.run_dir
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                self.evaluation_pending = self.data.val is not None and (
                    self.epoch % args.eval_interval == 0 or self.epoch == args.epochs
                )
                self._save("last.pt")  # the epoch is kept even if its evaluation then fails
                if self.evaluation_pending:
                    self._evaluate_and_save()
            return self.run_dir
        except OSError as e:
            raise self._os_error(e) from None
        finally:
            self.stop.restore()
            if self.folder:
                self.folder.close()
            self.ddp_model = None  # DDP's reducer must go before its process group, or gloo may abort at exit
            cleanup()

    def _evaluate_and_save(self) -> None:
        improved = self._evaluate()
        self.evaluation_pending = False
        if improved:
            self._save("best.pt")
        self._save("last.pt")

    def _os_error(self, error: OSError) -> Exception:
        """What a run says when the disk or the run folder fails it."""
        last = self.run_dir / "last.pt"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            then = (
                f"then continue with --resume {last}, which holds the last completed save (files are written "
                "whole or not at all)"
                if last.is_file()
                else "then run again: nothing was saved yet"
            )
            return UserError(f"disk full writing to {self.run_dir} ({error.strerror}): free space, {then}")
        if error.errno == errno.ENOENT and not self.run_dir.is_dir():
            return UserError(
                f"the run folder {self.run_dir} was removed or moved while training ({error.filename}: "
                f"{error.strerror}): its checkpoints went with it; put it back and --resume, or start "
                "a new run"
            )
        return error

    def _train_epoch(self) -> bool:
        """One epoch from `step_in_epoch`; False when a signal stopped training (after checkpointing).

        `step_in_epoch` counts batches drawn, trained or dropped, so it is also the resume position."""
        args = self.args
        self.data.start_epoch(self.epoch, self.step_in_epoch)
        self.ddp_model.train()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.step_in_epoch,
            desc=f"epoch {self.epoch + 1}/{args.epochs}",
            disable=not self.dist.is_main or args.no_progress,
            dynamic_ncols=True,
        )
        window_start, window_steps, trained, dropped = time.perf_counter(), 0, 0, 0
        for batch in self.data.train:
            if self.step_in_epoch >= self.steps_per_epoch:
                break
            # every process agrees on stopping and on dropping a batch before any of them runs a forward
            too_small = batch is None or len(batch[0]) < self.min_batch  # what --skip-bad-samples left of it
            flags = all_reduce_sum(torch.tensor([float(self.stop.requested), float(too_small)], device=self.device))
            if flags[0] > 0:
                bar.close()
                self._save("last.pt")
                said = (
                    f"{self.stop.signal_name or 'signal'}: saved {self.run_dir / 'last.pt'} at epoch {self.epoch + 1}, "
                    f"step {self.step_in_epoch}; continue with --resume {self.run_dir / 'last.pt'}"
                )
                if self.stop.signal_name == "SIGINT":  # Ctrl-C: exit 130, as a shell expects
                    raise Interrupted(said)
                self._log(said)  # SIGTERM from a scheduler: a clean stop, exit 0
                return False
            self.step_in_epoch += 1
            bar.update()
            if flags[1] > 0:
                dropped += 1
                continue
            loss, logs = self._step(batch)
            trained += 1
            window_steps += 1
            now = time.perf_counter()  # throughput over the logging window so far, data loading included
            images_per_s = args.batch_size * window_steps / max(now - window_start, 1e-9)
            bar.set_postfix(
                loss=f"{loss:.4f}", img_s=f"{images_per_s:.1f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}"
            )
            if self.step_in_epoch % args.log_interval == 0 or self.step_in_epoch == self.steps_per_epoch:
                window_start, window_steps = now, 0
                self._record(
                    {
                        "epoch": self.epoch + 1,
                        "step": self.position,
                        "train/loss": loss,
                        "train/lr": self.scheduler.get_last_lr()[0],
                        "train/images_per_s": images_per_s,
                        **{f"train/{k}": v for k, v in logs.items()},
                    }
                )
        bar.close()
        if dropped:
            self._log(
                f"epoch {self.epoch + 1}: dropped {dropped} batches that skipped samples left with fewer than "
                f"{self.min_batch} samples"
            )
        if trained == 0:
            skip = self.task.skip
            counts = f" ({skip.summary()})" if skip is not None else ""
            raise UserError(
                f"epoch {self.epoch + 1}: no training batch was usable{counts}; fix or remove the bad "
                "samples: nothing was trained, so no checkpoint was written for this epoch"
            )
        return True

    def _step(self, batch: Any) -> tuple[float, dict[str, float]]:
        """Forward, NaN/inf guard, backward, clipped optimiser step, schedule and EMA; the loss and its logs."""
        with torch.autocast(self.device.type, enabled=self.amp):
            loss, logs = self.task.compute_loss(self.ddp_model, batch, self.device)
        if all_reduce_sum(torch.tensor([float(not torch.isfinite(loss))], device=self.device))[0] > 0:
            last = self.run_dir / "last.pt"
            kept = (
                f"{last} still holds the last good state (resume from it with a lower --lr)"
                if last.is_file()
                else "nothing was saved yet (the first checkpoint comes at the end of epoch 1)"
            )
            raise TrainingDiverged(
                f"loss became {loss.item()} at epoch {self.epoch + 1}, step {self.step_in_epoch}; "
                f"{kept}. Try a lower --lr or --clip-grad."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.args.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema:
            self.ema.update_parameters(unwrap(self.model))
        return loss.item(), logs

    def _evaluate(self) -> bool:
        """Evaluate the EMA (or plain) weights; True on every process when the score improved."""
        model = self.ema.module if self.ema else unwrap(self.model)
        if self.args.bn_recalibration > 0 and not self.args.frozen_bn:
            batches = self.data.recalibration_batches(self.epoch, self.args.bn_recalibration)
            recalibrate_batchnorm(model, batches, self.device, self.dist.distributed)
        model.eval()
        with torch.no_grad():
            metrics = self.task.evaluate(model, self.data.val, self.run_dir, self.dist)
        improved = False
        if self.dist.is_main and metrics is not None:
            self._record({"epoch": self.epoch, "step": self.position, **{f"val/{k}": v for k, v in metrics.items()}})
            summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            self._log(f"epoch {self.epoch}: {summary}")
            improved = metrics["score"] > self.best_score
            if improved:
                self.best_score = metrics["score"]
        return bool(gather_objects(improved)[0])

    # ---- set-up, checkpoints, logging

    @property
    def position(self) -> int:
        """Batches drawn since the start of the run: the global step of logs and of resume."""
        return self.epoch * self.steps_per_epoch + self.step_in_epoch

    def _build(self) -> None:
        args = self.args
        if self.task.input_size is not None:
            check_step_fits(self.task.size_flags, self.batch_per_process, self.task.input_size, self.device)
        seed_everything(args.seed + self.dist.rank)
        model = self.task.build_model(announce=not args.resume)
        if args.frozen_bn:
            freeze_batchnorm(model)
        elif self.dist.distributed and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
            model.register_forward_pre_hook(channels_last_inputs)
        self.model = model

        train_set, val_set = self.task.build_datasets()
        if len(train_set) < args.batch_size:
            raise UserError(f"the training set has {len(train_set)} samples, fewer than --batch-size {args.batch_size}")
        if val_set is not None and self.task.skip is None and hasattr(val_set, "files"):
            started = time.perf_counter()  # a bad validation file stops the run now, not after its first epoch
            checked = check_files(*val_set.files())
            self.validation_check = f"{checked} validation files checked in {time.perf_counter() - started:.1f} s"
        self.data = TrainingData(
            train_set, val_set, self.task.collate, self.task.eval_collate, args, self.dist, self.batch_per_process
        )
        self.steps_per_epoch = len(train_set) // args.batch_size
        total_steps = self.steps_per_epoch * args.epochs
        self.optimizer = build_optimizer(model, args)
        self.scheduler = build_scheduler(
            self.optimizer, total_steps, min(int(args.warmup_epochs * self.steps_per_epoch), total_steps), args.schedule
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.ema = (
            AveragedModel(model, multi_avg_fn=ramped_ema(args.ema_decay), use_buffers=True)
            if args.ema_decay > 0
            else None
        )
        self.ddp_model = (
            DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.distributed
            else model
        )
        compiled, self.compile_decision = compile_decision(args.compile, self.device, len(train_set) * args.epochs)
        if compiled:  # the training forward only: checkpoints, EMA and evaluation use the plain module
            self.ddp_model = torch.compile(self.ddp_model)
        self.epoch, self.step_in_epoch, self.best_score, self.evaluation_pending = 0, 0, -math.inf, False

    def _open_run_folder(self) -> Path:
        """Rank 0 claims and locks the folder; its path, or its error, reaches every process."""
        path, error = None, None
        if self.dist.is_main:
            try:
                self.folder = RunFolder.open(
                    self.args.project or Path("runs") / self.task.name,
                    self.args.name,
                    self.args.exist_ok,
                    self.args.resume,
                )
                path = self.folder.path
            except UserError as e:
                error = str(e)
        path, error = gather_objects((path, error))[0]  # type: ignore[misc]
        if error is not None:
            raise UserError(error)
        return Path(path)

    def _checkpoint(self) -> dict[str, Any]:
        return {
            **self.task.checkpoint_meta(),
            "task": self.task.name,
            "model": unwrap(self.model).state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "ema_steps": int(self.ema.n_averaged) if self.ema else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "best_score": self.best_score,
            "evaluation_pending": self.evaluation_pending,
            "train_samples": len(self.data.train_set),
            "rng": rng_state(),
            "args": saved_arguments(self.args),
        }

    def _resume(self) -> None:
        ckpt = read_training_checkpoint(self.args.resume, self.task.name)
        unwrap(self.model).load_state_dict(ckpt["model"])
        if self.ema and ckpt.get("ema") is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
            self.ema.n_averaged.fill_(ckpt["ema_steps"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step_in_epoch, self.best_score = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["best_score"]
        self.evaluation_pending = bool(ckpt.get("evaluation_pending", False))
        samples = ckpt.get("train_samples", len(self.data.train_set))
        if samples != len(self.data.train_set):
            raise UserError(
                f"--resume {self.args.resume}: the run trained on {samples} samples, the training set "
                f"here has {len(self.data.train_set)}: resume only with the same data (new paths are "
                "fine), or start a new run"
            )
        set_rng_state(ckpt["rng"])
        self._log(f"resumed {self.args.resume} at epoch {self.epoch + 1}, step {self.step_in_epoch}")

    def _save(self, name: str) -> None:
        if self.dist.is_main:
            save_checkpoint(self._checkpoint(), self.run_dir / name)
        barrier()

    def _log(self, message: str) -> None:
        if self.dist.is_main:
            RunFolder.log(message)

    def _record(self, record: dict[str, Any]) -> None:
        if self.folder:
            self.folder.record(record, record["step"])
