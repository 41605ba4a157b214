"""Training CLI (``loopstream-train``): simulator pretraining and fine-tuning on COCO datasets.

Each batch draws a fraction ``--sim-fraction`` of its frames from the simulator (fresh random
configurations and seeds, never repeated) and the rest from the COCO training images, all
augmented (``loopstream.models.augment``). ``--sim-fraction 1`` is pretraining; fine-tuning starts
from ``--init`` (weights only), ``--resume`` continues an interrupted run exactly where its last
checkpoint left off (weights, optimiser, step, elapsed time, random state). The learning rate
follows the run's progress, the larger of step / ``--steps`` and time / ``--max-minutes``
(``loopstream.models.training_run``).

Outputs in ``--out``: ``last.pt`` (every ``--val-every`` steps and at the end) and ``metrics.csv``
(step, split, loss, Dice of foreground and core, learning rate, elapsed time).

Example (pretraining, then fine-tuning on creme with images 3, 7, 11 held out)::

    loopstream-train --out runs/pre --steps 500 --sim-fraction 1
    loopstream-train --out runs/ft --init runs/pre/last.pt --steps 400 --sim-fraction 0.4 \\
        --coco ../shared/data/creme-ds25s/train/annotations.json --exclude-ids 3,7,11
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from loopstream.models.architectures import build_model
from loopstream.models.augment import augment, random_crop
from loopstream.models.datasets import CocoLoops, Sample, simulated_sample
from loopstream.models.losses import dice_scores, segmentation_loss
from loopstream.models.training_run import TrainingRun

# Simulator seeds: training draws from TRAIN_SEEDS, validation uses VAL_SEEDS; seeds below 10000
# are left to evaluation and tests, so no evaluated frame was ever trained on.
TRAIN_SEEDS = (1_000_000, 2_000_000)
VAL_SEEDS = range(10_000, 10_008)
LOG_COLUMNS = ["step", "split", "loss", "dice_fg", "dice_core", "lr", "elapsed_s"]


def parse_ids(text: str | None) -> list[int] | None:
    return None if not text else [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loopstream-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, metrics.csv)")
    p.add_argument("--arch", default="unet_r18", help="architecture name (loopstream.models.architectures)")
    p.add_argument("--coco", type=Path, help="COCO annotation file of real training images")
    p.add_argument("--images", type=Path, help="image folder of --coco (default: imgs/ beside it)")
    p.add_argument("--exclude-ids", help="COCO image ids never read (held-out test images), e.g. 3,7,11")
    p.add_argument("--val-ids", help="COCO image ids used for validation instead of training")
    p.add_argument("--sim-fraction", type=float, default=1.0, help="share of each batch from the simulator")
    p.add_argument("--sim-px", type=int, default=256, help="side of simulated frames (px)")
    p.add_argument("--crop-px", type=int, default=256, help="side of random crops of larger real frames (px)")
    p.add_argument("--steps", type=int, default=500, help="optimiser steps of the whole run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (warm-up, cosine decay)")
    p.add_argument("--init", type=Path, help="start from these weights (fine-tuning)")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    p.add_argument("--val-every", type=int, default=50, help="steps between validation and checkpoints")
    p.add_argument(
        "--max-minutes",
        type=float,
        help="wall-time budget (min): the run ends, annealed, at --steps or after this, whichever first",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.sim_fraction < 1.0 and args.coco is None:
        p.error("--sim-fraction < 1 needs --coco")
    return args


class BatchSource:
    """Augmented training batches mixing simulated and real frames."""

    def __init__(
        self, real: list[Sample], sim_fraction: float, sim_px: int, crop_px: int, rng: np.random.Generator
    ) -> None:
        self.real, self.sim_fraction, self.sim_px, self.crop_px, self.rng = (
            real,
            sim_fraction,
            sim_px,
            crop_px,
            rng,
        )

    def sample(self) -> Sample:
        if not self.real or self.rng.random() < self.sim_fraction:
            seed = int(self.rng.integers(*TRAIN_SEEDS))
            return simulated_sample(seed, self.rng, (self.sim_px, self.sim_px))
        return self.real[int(self.rng.integers(len(self.real)))]

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = []
        for _ in range(size):
            s = self.sample()
            pairs.append(random_crop(*augment(s.image, s.targets, self.rng), self.crop_px, self.rng))
        return to_tensors([p[0] for p in pairs], [p[1] for p in pairs])


def to_tensors(images: list[np.ndarray], targets: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.stack(images)[:, None].astype(np.float32))
    y = torch.from_numpy(np.stack(targets).astype(np.float32))
    return x, y


def validation_set(
    args: argparse.Namespace, coco: CocoLoops | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed, unaugmented validation frames: simulated (VAL_SEEDS) plus any --val-ids images."""
    from loopstream.core.imaging import standardise

    rng = np.random.default_rng(12345)
    samples = [simulated_sample(seed, rng, (args.sim_px, args.sim_px)) for seed in VAL_SEEDS]
    if coco is not None and args.val_ids:
        samples += [coco.sample(i) for i in parse_ids(args.val_ids) or []]
    return [to_tensors([standardise(s.image)], [s.targets]) for s in samples]


def evaluate_loss(
    model: torch.nn.Module, frames: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, ...]:
    model.eval()
    losses, dices = [], []
    with torch.no_grad():
        for x, y in frames:
            logits = model(x)
            losses.append(float(segmentation_loss(logits, y)))
            dices.append(dice_scores(logits, y).numpy())
    model.train()
    d = np.mean(dices, axis=0)
    return float(np.mean(losses)), float(d[0]), float(d[1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    coco = None
    real: list[Sample] = []
    if args.coco is not None:
        exclude = (parse_ids(args.exclude_ids) or []) + (parse_ids(args.val_ids) or [])
        coco = CocoLoops(args.coco, args.images, exclude_ids=parse_ids(args.exclude_ids))
        real = [coco.sample(i) for i in coco.ids if i not in exclude]
        print(f"real training images: {[s.name for s in real]}")

    model = build_model(args.arch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    run = TrainingRun(args, model, optimizer, rng, LOG_COLUMNS)
    if not args.resume and args.init is not None:
        model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=False)["model"])
    source = BatchSource(real, args.sim_fraction if real else 1.0, args.sim_px, args.crop_px, rng)
    val_frames = validation_set(args, coco)

    model.train()
    recent: list[float] = []
    with tqdm(total=args.steps, initial=run.step, unit="step") as bar:
        while not run.done:
            lr = run.set_learning_rate()
            x, y = source.batch(args.batch_size)
            loss = segmentation_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.step += 1
            recent.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(recent[-20:]):.3f}", lr=f"{lr:.2g}")
            if run.step % args.val_every == 0 or run.done:
                seconds = round(run.elapsed(), 1)
                val_loss, dice_fg, dice_core = evaluate_loss(model, val_frames)
                run.log([run.step, "train", round(float(np.mean(recent)), 4), "", "", f"{lr:.3g}", seconds])
                run.log(
                    [
                        run.step,
                        "val",
                        round(val_loss, 4),
                        round(dice_fg, 4),
                        round(dice_core, 4),
                        f"{lr:.3g}",
                        seconds,
                    ]
                )
                recent = []
                run.save()
                bar.write(
                    f"step {run.step}: val loss {val_loss:.3f}, Dice fg {dice_fg:.3f}, core {dice_core:.3f}"
                )
    run.close()


if __name__ == "__main__":
    main()
