"""The one training engine both heads share.

A task (SSDLite, Mobile DeepLabv3) tells the engine how to build its model and data, compute its loss and
evaluate; the engine owns everything else: optimiser and schedule, AMP on CUDA, channels_last, EMA,
gradient clipping, DDP + SyncBatchNorm under torchrun, resumable atomic checkpoints, SIGINT/SIGTERM,
NaN/inf guards, progress bars, TensorBoard and metrics.jsonl in `runs/<task>/<name>/`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from backbone.checkpoint import WeightsError, load_checkpoint, save_checkpoint
from datasets.errors import DatasetError
from train.batchnorm import freeze_batchnorm, recalibrate_batchnorm
from train.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup,
    gather_objects,
    init_distributed,
    shard_dataset,
)


class Task(Protocol):
    """What the engine needs to know about a task, and nothing more."""

    name: str  # results go to runs/<name>/...

    def build_model(self) -> nn.Module: ...

    def build_datasets(self) -> tuple[Dataset, Dataset | None]: ...

    def collate(self, samples: list[Any]) -> Any: ...

    def compute_loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch (normalisers already averaged over processes) and scalars to log."""
        ...

    def evaluate(self, model: nn.Module, loader: DataLoader, run_dir: Path, dist_info: DistInfo) -> dict[str, float] | None:
        """Metrics on the validation set on rank 0 (None elsewhere), with the selection metric under "score"."""
        ...

    def checkpoint_meta(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild the model alone: arch, preset, config, class names."""
        ...


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


def add_engine_arguments(parser: argparse.ArgumentParser, *, lr: float, epochs: int, batch_size: int,
                         weight_decay: float, optimizer: str, schedule: str) -> None:  # fmt: skip
    """Flags every training entry point shares; the task passes its recipe's defaults."""
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default: {epochs})")
    g.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"total batch size over all processes (default: {batch_size})")  # fmt: skip
    g.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default: {lr})")
    g.add_argument("--optimizer", choices=("sgd", "rmsprop", "adamw"), default=optimizer,
                   help=f"(default: {optimizer})")  # fmt: skip
    g.add_argument("--momentum", type=float, default=0.9, help="SGD/RMSProp momentum (default: 0.9)")
    g.add_argument("--weight-decay", type=float, default=weight_decay,
                   help=f"on conv/linear weights only, never on BN or biases (default: {weight_decay})")  # fmt: skip
    g.add_argument("--schedule", choices=("cosine", "poly"), default=schedule, help=f"(default: {schedule})")
    g.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warmup length (default: 1)")
    g.add_argument("--clip-grad", type=float, default=10.0, help="max gradient norm, 0 disables (default: 10)")
    g.add_argument("--ema-decay", type=float, default=0.9998,
                   help="EMA of weights used for evaluation, 0 disables; ramped up over the first ~2000 steps so "
                        "short runs are not stuck near the initial weights (default: 0.9998)")  # fmt: skip
    g.add_argument("--frozen-bn", action="store_true", help="freeze every BatchNorm (small batches, fine-tuning)")
    g.add_argument("--no-augment", action="store_true",
                   help="train on the evaluation transform (resize/pad only): the sanity check that a model can "
                        "fit a few images before a long run")  # fmt: skip
    g.add_argument("--bn-recalibration", type=int, default=20, metavar="N",
                   help="before each evaluation, recompute BatchNorm statistics of the evaluated weights on N "
                        "training batches (precise BN); running averages lag the weights in short runs; 0 disables "
                        "(default: 20)")  # fmt: skip
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA, off on CPU)")  # fmt: skip
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format (default: on; on CPU, NCHW depthwise backward is ~17× slower)")  # fmt: skip
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the training forward (inductor; the first steps compile for a few seconds, "
                        "then each step runs faster: 1.3× for an SSDLite 320 CPU step, see BENCHMARKS.md)")  # fmt: skip
    g = parser.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="data loading processes per training process")  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--project", type=Path, default=None, help="results root (default: runs/<task>)")
    g.add_argument("--name", default="exp", help="run folder name under --project (default: exp)")
    g.add_argument("--exist-ok", action="store_true", help="reuse runs/<task>/<name> instead of making name2, name3…")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="LAST_PT",
                   help="continue a run: its last.pt, or runs/<task>/<name>/last.pt when no path is given")  # fmt: skip
    g.add_argument("--eval-interval", type=int, default=1, help="evaluate every N epochs (default: 1)")
    g.add_argument("--log-interval", type=int, default=10, help="TensorBoard scalars every N steps (default: 10)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


# Flags a resumed run takes from the command line rather than from the interrupted run.
RUNTIME_FLAGS = frozenset({"resume", "device", "workers", "no_progress"})


def parse_training_args(parser: argparse.ArgumentParser, argv: list[str] | None, task_name: str) -> argparse.Namespace:
    """Parse flags; with --resume, every other flag comes from the interrupted run's checkpoint."""
    args = parser.parse_args(argv)
    if args.resume:
        if args.resume == "auto":
            args.resume = str((args.project or Path("runs") / task_name) / args.name / "last.pt")
        try:
            saved = load_checkpoint(args.resume).get("args")
        except WeightsError as e:
            raise SystemExit(f"error: --resume: {e}") from None
        if not isinstance(saved, dict):
            raise SystemExit(f"error: --resume {args.resume}: not a training checkpoint of this suite (no saved flags)")
        for key, value in saved.items():
            if key not in RUNTIME_FLAGS:
                setattr(args, key, Path(value) if key == "project" and value is not None else value)
    return args


# --------------------------------------------------------------------------- pieces of the loop


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way, so a resumed run sees the rest of that epoch."""

    def __init__(self, dataset: Dataset, dist_info: DistInfo, seed: int) -> None:
        super().__init__(dataset, dist_info.world_size, dist_info.rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on BatchNorm parameters and biases (every tensor with fewer than 2 dimensions)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    groups = parameter_groups(model, args.weight_decay)
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=args.momentum > 0)
    if args.optimizer == "rmsprop":  # TF's RMSProp defaults as in the ssdlite_mobilenet_v2_coco config
        return torch.optim.RMSprop(groups, lr=args.lr, momentum=args.momentum, alpha=0.9, eps=1.0)
    return torch.optim.AdamW(groups, lr=args.lr)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warmup, then cosine to zero or TF's poly (power 0.9) decay, as a factor of the peak lr."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return (1.0 - progress) ** 0.9


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def ramped_ema(decay: float, ramp_steps: float = 2000.0):
    """AveragedModel `multi_avg_fn` whose decay rises as decay·(1 - exp(-t/ramp_steps)) (yolov5/timm).

    A fixed 0.9998 keeps 90% of the random initial weights after 500 steps, so short runs would evaluate a
    near-untrained model; the ramp lets the average follow the weights early and settle later.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        d = decay * (1.0 - math.exp(-(int(num_averaged) + 1) / ramp_steps))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked) follow the model
            torch._foreach_copy_(averaged, current)

    return update


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def next_run_dir(project: Path, name: str, exist_ok: bool) -> Path:
    """runs/<task>/<name>, or <name>2, <name>3… if taken (never writes into someone else's run)."""
    path = project / name
    if exist_ok or not path.exists():
        return path
    n = 2
    while (project / f"{name}{n}").exists():
        n += 1
    return project / f"{name}{n}"


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

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def channels_last_inputs(module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: image batches enter a channels_last model in channels_last (else it runs NCHW kernels)."""
    return tuple(
        x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.ndim == 4 else x
        for x in inputs
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


# --------------------------------------------------------------------------- the engine


class Trainer:
    """Runs one training job for `task` with the shared flags in `args`."""

    def __init__(self, task: Task, args: argparse.Namespace) -> None:
        self.task, self.args = task, args
        self.dist = init_distributed(args.device)
        self.device = self.dist.device
        on_cuda = self.device.type == "cuda"
        self.amp = on_cuda if args.amp is None else args.amp
        if self.amp and not on_cuda:
            raise SystemExit("error: --amp needs CUDA; drop it or use --device cuda")
        self.channels_last = args.channels_last
        if args.batch_size % self.dist.world_size:
            raise SystemExit(
                f"error: --batch-size {args.batch_size} does not split over {self.dist.world_size} processes"
            )
        self.batch_per_process = args.batch_size // self.dist.world_size
        self.stop = StopRequest()
        self.writer = None

    # ---- set-up

    def _run_dir(self) -> Path:
        project = self.args.project or Path("runs") / self.task.name
        if self.args.resume:
            return Path(self.args.resume).parent
        path = next_run_dir(project, self.args.name, self.args.exist_ok) if self.dist.is_main else None
        return Path(gather_objects(path)[0])

    def _build(self) -> None:
        args = self.args
        seed_everything(args.seed + self.dist.rank)
        model = self.task.build_model()
        if args.frozen_bn:
            freeze_batchnorm(model)
        elif self.dist.distributed and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            model.register_forward_pre_hook(channels_last_inputs)
        self.model = model

        train_set, val_set = self.task.build_datasets()
        if len(train_set) < args.batch_size:
            raise SystemExit(
                f"error: the training set has {len(train_set)} samples, fewer than --batch-size {args.batch_size}"
            )
        self.sampler = ResumableSampler(train_set, self.dist, args.seed)
        loader_kwargs: dict[str, Any] = dict(
            num_workers=args.workers,
            collate_fn=self.task.collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=args.workers > 0,
        )
        if args.workers > 0:
            from datasets.loading import seed_worker

            loader_kwargs.update(worker_init_fn=seed_worker, prefetch_factor=4)
        self.train_loader = DataLoader(train_set, self.batch_per_process, sampler=self.sampler, **loader_kwargs)
        self.recalibration_loader = partial(DataLoader, train_set, self.batch_per_process, shuffle=True, drop_last=True,
                                            **{**loader_kwargs, "persistent_workers": False})  # fmt: skip
        self.val_loader = None
        if val_set is not None:
            self.val_loader = DataLoader(shard_dataset(val_set, self.dist), self.batch_per_process, **loader_kwargs)

        self.steps_per_epoch = len(train_set) // args.batch_size
        self.total_steps = self.steps_per_epoch * args.epochs
        warmup = min(int(args.warmup_epochs * self.steps_per_epoch), self.total_steps)
        self.optimizer = build_optimizer(model, args)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.total_steps, warmup, args.schedule)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.ema = None
        if args.ema_decay > 0:
            self.ema = AveragedModel(model, multi_avg_fn=ramped_ema(args.ema_decay), use_buffers=True)
        self.ddp_model = (
            DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.distributed
            else model
        )
        if args.compile:  # the training forward only: checkpoints, EMA and evaluation use the plain module
            self.ddp_model = torch.compile(self.ddp_model)
        self.epoch, self.step_in_epoch, self.best_score = 0, 0, -math.inf

    def _checkpoint(self) -> dict[str, Any]:
        return {
            **self.task.checkpoint_meta(),
            "model": unwrap(self.model).state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "ema_steps": int(self.ema.n_averaged) if self.ema else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "best_score": self.best_score,
            "rng": rng_state(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()},
        }

    def _resume(self) -> None:
        path = Path(self.args.resume)
        ckpt = load_checkpoint(path)
        meta = self.task.checkpoint_meta()
        if ckpt.get("arch") != meta.get("arch") or "optimizer" not in ckpt:
            raise WeightsError(f"{path}: not a {meta.get('arch')} training checkpoint (arch {ckpt.get('arch')!r})")
        unwrap(self.model).load_state_dict(ckpt["model"])
        if self.ema and ckpt.get("ema") is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
            self.ema.n_averaged.fill_(ckpt["ema_steps"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step_in_epoch, self.best_score = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["best_score"]
        set_rng_state(ckpt["rng"])
        self._log(f"resumed {path} at epoch {self.epoch + 1}, step {self.step_in_epoch}")

    # ---- logging (rank 0 only)

    def _log(self, message: str) -> None:
        if self.dist.is_main:
            tqdm.write(message, file=sys.stderr)

    def _record(self, record: dict[str, Any], step: int) -> None:
        if not self.dist.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                self.writer.add_scalar(key, value, step)

    # ---- the loop

    def fit(self) -> Path:
        """Train to the last epoch (or a stop signal) and return the run folder."""
        args = self.args
        self._build()
        self.run_dir = self._run_dir()
        if self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "args.json").write_text(json.dumps(self._checkpoint()["args"], indent=2))
            self.writer = SummaryWriter(self.run_dir)
        if args.resume:
            self._resume()
        self._log(
            f"{self.task.name}: {self.steps_per_epoch} steps/epoch × {args.epochs} epochs, batch {args.batch_size} "
            f"on {self.dist.world_size} × {self.device}, amp {self.amp}, channels_last {self.channels_last} → {self.run_dir}"
        )
        self.stop.install()
        try:
            while self.epoch < args.epochs:
                if not self._train_epoch():
                    return self.run_dir
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                if self.val_loader is not None and (self.epoch % args.eval_interval == 0 or self.epoch == args.epochs):
                    if self._evaluate():
                        self._save("best.pt")
                self._save("last.pt")
            return self.run_dir
        finally:
            self.stop.restore()
            if self.writer:
                self.writer.close()
            self.ddp_model = None  # DDP's reducer must go before its process group, or gloo may abort at exit
            cleanup()

    def _save(self, name: str) -> None:
        if self.dist.is_main:
            save_checkpoint(self._checkpoint(), self.run_dir / name)
        barrier()

    def _train_epoch(self) -> bool:
        """One epoch from `step_in_epoch`; False when a signal stopped training (after checkpointing)."""
        args = self.args
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip = self.step_in_epoch * self.batch_per_process
        self.ddp_model.train()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.step_in_epoch,
            desc=f"epoch {self.epoch + 1}/{args.epochs}",
            disable=not self.dist.is_main or args.no_progress,
            dynamic_ncols=True,
        )
        window_start, window_steps, images_per_s = time.perf_counter(), 0, 0.0
        for batch in self.train_loader:
            if self.step_in_epoch >= self.steps_per_epoch:
                break
            if batch is None:  # the skip policy dropped every sample of this batch (see --skip-bad-samples)
                continue
            with torch.autocast(self.device.type, enabled=self.amp):
                loss, logs = self.task.compute_loss(self.ddp_model, batch, self.device)
            flags = all_reduce_sum(
                torch.tensor([float(not torch.isfinite(loss)), float(self.stop.signal_name is not None)], device=self.device)
            )
            if flags[0] > 0:
                bar.close()
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {self.epoch + 1}, step {self.step_in_epoch + 1}; "
                    f"{self.run_dir / 'last.pt'} still holds the last good state. Try a lower --lr or --clip-grad."
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if args.clip_grad > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), args.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema:
                self.ema.update_parameters(unwrap(self.model))
            self.step_in_epoch += 1

            global_step = self.epoch * self.steps_per_epoch + self.step_in_epoch
            window_steps += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{images_per_s:.1f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if self.step_in_epoch % args.log_interval == 0 or self.step_in_epoch == self.steps_per_epoch:
                now = time.perf_counter()  # throughput over the logging window, data loading included
                images_per_s = args.batch_size * window_steps / max(now - window_start, 1e-9)
                window_start, window_steps = now, 0
                self._record({"epoch": self.epoch + 1, "step": global_step, "train/loss": loss.item(),
                              "train/lr": self.scheduler.get_last_lr()[0], "train/images_per_s": images_per_s,
                              **{f"train/{k}": v for k, v in logs.items()}}, global_step)  # fmt: skip
            if flags[1] > 0:
                bar.close()
                self._save("last.pt")
                self._log(
                    f"{self.stop.signal_name or 'signal'}: saved {self.run_dir / 'last.pt'} at epoch {self.epoch + 1}, "
                    f"step {self.step_in_epoch}; continue with --resume {self.run_dir / 'last.pt'}"
                )
                return False
        bar.close()
        return True

    def _evaluate(self) -> bool:
        """Evaluate the EMA (or plain) weights; True on every process when the score improved."""
        model = self.ema.module if self.ema else unwrap(self.model)
        if self.args.bn_recalibration > 0 and not self.args.frozen_bn:
            # its own generator, so the batches drawn here leave the training RNG streams untouched
            generator = torch.Generator().manual_seed(self.args.seed * 100_003 + self.dist.rank * 1_009 + self.epoch)
            batches = itertools.islice(self.recalibration_loader(generator=generator), self.args.bn_recalibration)
            recalibrate_batchnorm(model, batches, self.device, self.dist.distributed)
        model.eval()
        with torch.no_grad():
            metrics = self.task.evaluate(model, self.val_loader, self.run_dir, self.dist)
        improved = False
        if self.dist.is_main and metrics is not None:
            global_step = self.epoch * self.steps_per_epoch
            self._record({"epoch": self.epoch, "step": global_step, **{f"val/{k}": v for k, v in metrics.items()}}, global_step)
            summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            self._log(f"epoch {self.epoch}: {summary}")
            improved = metrics["score"] > self.best_score
            if improved:
                self.best_score = metrics["score"]
        return bool(gather_objects(improved)[0])


def global_batch_share(local_count: torch.Tensor) -> torch.Tensor:
    """local / mean-over-processes of a loss normaliser (positives, labelled pixels); 1 in one process.

    A loss averaged over its own process's count, times this factor, is averaged over the global batch once DDP
    averages the gradients, so N processes train exactly like one process on the same global batch.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return torch.ones((), device=local_count.device)
    local = local_count.detach().float().clamp(min=1)
    mean = all_reduce_sum(local_count.detach().float().clone()) / torch.distributed.get_world_size()
    return local / mean.clamp(min=1)


def train_main(parser: argparse.ArgumentParser, make_task: Any, task_name: str, argv: list[str] | None) -> Path:
    """What `python train/<task>.py` does: parse (or restore) the flags, build the task, train, summarise."""
    args = parse_training_args(parser, argv, task_name)
    if args.weights is None:  # ImageNet backbone weights for real data; the synthetic shapes train from scratch
        args.weights = "none" if args.data == "synthetic" else "IMAGENET1K_V1"
    try:
        task = make_task(args)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    run_dir = run_training(task, args)
    if task.skip is not None and task.skip.total:
        print(task.skip.summary())
    print(f"results in {run_dir}")
    return run_dir


def run_training(task: Task, args: argparse.Namespace) -> Path:
    """Entry-point wrapper: user errors print one line and exit 2; divergence exits 3."""
    try:
        return Trainer(task, args).fit()
    except (WeightsError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(3) from None

