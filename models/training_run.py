"""The bookkeeping of one training run, shared by the semantic and the instance trainer.

A run lives in its ``--out`` folder: ``last.pt`` (weights, optimiser, step, elapsed wall time,
random states, arguments), written atomically so an interrupted run never leaves half a
checkpoint, and ``metrics.csv``, appended to when the run is resumed. Progress is the larger of
step / ``--steps`` and wall time / ``--max-minutes``, so a run on a busy shared CPU that ends on its
time budget still anneals its learning rate (``learning_rate``) instead of stopping mid-way.

``write_slim_checkpoint`` is the shipped form of a run's weights: what the repository keeps beside
a default model (``models/checkpoints``) for fine-tuning, benchmarks and parity tests.

Examples
--------
>>> [round(learning_rate(progress, 1e-3), 6) for progress in (0.0, 0.05, 1.0)]
[1e-05, 0.001, 1e-05]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch


def parse_ids(text: str | None) -> list[int]:
    """COCO image ids of a comma-separated list (``--exclude-ids 3,7,11``); none for an empty one."""
    return [int(t) for t in (text or "").split(",") if t.strip()]


def add_real_data_arguments(
    p: argparse.ArgumentParser, rescale: tuple[float, float], sim_fraction: float
) -> None:
    """The training data of both trainers: several COCO datasets, each with its held-out ids, the
    random rescale of their crops and the share of simulated frames (defaults ``rescale`` and
    ``sim_fraction``)."""
    p.add_argument(
        "--coco",
        type=Path,
        action="append",
        default=[],
        help="COCO annotation file of real training images (repeat for several datasets; each is "
        "drawn equally often); its images are read from imgs/ beside it, else its own folder",
    )
    p.add_argument(
        "--exclude-ids",
        action="append",
        default=[],
        help="COCO image ids never read (held-out images), one per --coco in the same order, e.g. 3,7,11",
    )
    p.add_argument(
        "--rescale",
        type=float,
        nargs=2,
        default=rescale,
        metavar=("MIN", "MAX"),
        help=f"range of the log-uniform random rescale of real crops (default {rescale[0]:g} {rescale[1]:g})",
    )
    p.add_argument(
        "--sim-fraction", type=float, default=sim_fraction, help="share of frames from the simulator"
    )


def check_real_data_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject what ``add_real_data_arguments`` cannot mean; gives every --coco its exclude list
    (``args.exclude_ids`` becomes one list of ids per dataset)."""
    if not 0.0 <= args.sim_fraction <= 1.0:
        p.error("--sim-fraction must lie in [0, 1]")
    if args.sim_fraction < 1.0 and not args.coco:
        p.error("--sim-fraction < 1 needs --coco")
    if len(args.exclude_ids) > len(args.coco):
        p.error("give at most one --exclude-ids per --coco, in the same order")
    low, high = args.rescale
    if not 0.1 <= low <= high <= 10.0:
        p.error("--rescale needs 0.1 <= MIN <= MAX <= 10")
    args.exclude_ids = [parse_ids(text) for text in args.exclude_ids]
    args.exclude_ids += [[] for _ in range(len(args.coco) - len(args.exclude_ids))]


def learning_rate(progress: float, peak: float, warmup: float = 0.05) -> float:
    """Linear warm-up over the first 5 % of the run, then cosine decay to 1 % of ``peak``."""
    if progress < warmup:
        return peak * (0.01 + 0.99 * progress / warmup)
    cosine = 0.5 * (1.0 + np.cos(np.pi * min((progress - warmup) / (1.0 - warmup), 1.0)))
    return float(peak * (0.01 + 0.99 * cosine))


class TrainingRun:
    """Checkpoints, resumption, the metrics log, wall time and progress of one run.

    ``args`` needs ``out``, ``arch``, ``steps``, ``max_minutes``, ``lr`` and ``resume``; with
    ``resume`` the model, optimiser and random states continue from ``out/last.pt``. ``header``
    replaces ``{"arch": args.arch}`` as what ``last.pt`` records to rebuild the model (an imported
    detectron2 model also needs its spec overrides and anchors).
    """

    def __init__(
        self,
        args: argparse.Namespace,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        rng: np.random.Generator,
        log_columns: list[str],
        header: dict | None = None,
    ) -> None:
        self.args, self.model, self.optimizer, self.rng = args, model, optimizer, rng
        self.header = header or {"arch": args.arch}
        args.out.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path: Path = args.out / "last.pt"
        self.step, self._elapsed_before = 0, 0.0
        if args.resume:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            self.step, self._elapsed_before = state["step"], state["elapsed_s"]
            rng.bit_generator.state = state["rng"]
            if "torch_rng" in state:
                torch.set_rng_state(state["torch_rng"])
        log_path = args.out / "metrics.csv"
        new_log = not (args.resume and log_path.exists())
        self._log_file = log_path.open("w" if new_log else "a", newline="")
        self._log = csv.writer(self._log_file)
        if new_log:
            self._log.writerow(log_columns)
        self._start = time.monotonic()

    def elapsed(self) -> float:
        """Training wall time of the whole run in s, over resumed segments too."""
        return self._elapsed_before + time.monotonic() - self._start

    def progress(self) -> float:
        """Fraction of the run done, in [0, 1] and beyond when it is over."""
        budget = float("inf") if self.args.max_minutes is None else self.args.max_minutes * 60
        return max(self.step / self.args.steps, self.elapsed() / budget if budget > 0 else 1.0)

    @property
    def done(self) -> bool:
        return self.progress() >= 1.0

    def set_learning_rate(self) -> float:
        """Set the optimiser's learning rate for the current progress; returns it."""
        lr = learning_rate(self.progress(), self.args.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def log(self, row: list) -> None:
        self._log.writerow(row)
        self._log_file.flush()

    def save(self) -> None:
        state = dict(
            **self.header,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            step=self.step,
            elapsed_s=self.elapsed(),
            rng=self.rng.bit_generator.state,
            torch_rng=torch.get_rng_state(),
            args=vars(self.args),
        )
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)  # never a half-written last.pt

    def close(self) -> None:
        print(f"finished at step {self.step} after {self.elapsed() / 60:.1f} min")
        self._log_file.close()


REBUILD_KEYS = ("arch", "spec_overrides", "cell_anchors")


def checkpoint_header(path: str | Path) -> dict:
    """What rebuilds a model around a checkpoint's weights: its architecture and, for imported
    detectron2 models, their spec overrides and cell anchors."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {key: state[key] for key in REBUILD_KEYS if key in state}


def write_slim_checkpoint(model: torch.nn.Module, header: dict, path: str | Path) -> torch.nn.Module:
    """Save ``header`` (what rebuilds the model, e.g. ``{"arch": ...}``) and ``model``'s weights in
    half precision (floating tensors only); returns ``model`` with its weights rounded to those
    values, so a network exported from it computes what the saved weights compute."""
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({**header, "model": half}, path)
    model.load_state_dict(half)  # copied back into the float32 parameters, rounded
    return model
