"""Training CLI (``loopstream-train``): simulator pretraining and fine-tuning on COCO datasets.

Each batch draws a fraction ``--sim-fraction`` of its frames from the simulator (fresh random
configurations and seeds, never repeated) and the rest from the COCO training images of one or
more datasets (``--coco``, repeated; each dataset drawn equally often, its ``--exclude-ids`` never
read), as ``--crop-px`` crops rescaled by a random factor in ``--rescale``, all augmented
(``loopstream.models.augment``). The data options and their drawing are the instance trainer's
(``loopstream.models.training_run``, ``loopstream.models.datasets``).

``--sim-fraction 1`` is pretraining; fine-tuning starts from ``--init`` (weights only),
``--resume`` continues an interrupted run exactly where its last checkpoint left off (weights,
optimiser, step, elapsed time, random state). The learning rate follows the run's progress, the
larger of step / ``--steps`` and time / ``--max-minutes`` (``loopstream.models.training_run``).

Outputs in ``--out``: ``last.pt`` (every ``--val-every`` steps and at the end) and ``metrics.csv``
(step, split, loss, Dice of foreground and core, learning rate, elapsed time).

Example (pretraining, then fine-tuning on creme and hirst-ti with their validation images held out)::

    loopstream-train --out runs/pre --steps 500 --sim-fraction 1
    loopstream-train --out runs/ft --init runs/pre/last.pt --steps 400 --sim-fraction 0.3 \\
        --coco ../shared/data/creme-ds25s/train/annotations.json --exclude-ids 3,7,11 \\
        --coco ../shared/data/hirst-ti/train/annotations.json --exclude-ids 203,743,1204,1743 \\
        --rescale 0.75 1.5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from loopstream.models.architectures import build_model
from loopstream.models.augment import augment, random_crop, rescaled_crop
from loopstream.models.datasets import (
    PolygonImage,
    Sample,
    TrainingFrames,
    real_training_images,
    simulated_sample,
)
from loopstream.models.losses import dice_scores, segmentation_loss
from loopstream.models.targets import targets_from_instances
from loopstream.models.training_run import TrainingRun, add_real_data_arguments, check_real_data_arguments

# Simulator seeds of the validation frames (training draws from datasets.TRAIN_SEEDS); seeds below
# 10000 are left to evaluation and tests.
VAL_SEEDS = range(10_000, 10_008)
LOG_COLUMNS = ["step", "split", "loss", "dice_fg", "dice_core", "lr", "elapsed_s"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loopstream-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, metrics.csv)")
    p.add_argument("--arch", default="unet_r18", help="architecture name (loopstream.models.architectures)")
    add_real_data_arguments(p, rescale=(1.0, 1.0), sim_fraction=1.0)
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
    check_real_data_arguments(p, args)
    return args


class BatchSource:
    """Augmented training batches of ``frames``: simulated frames with their truth targets, real
    ones as ``crop_px`` windows rescaled by a random factor in ``rescale`` (log-uniform), their
    targets drawn from the loops the window holds."""

    def __init__(self, frames: TrainingFrames, crop_px: int, rescale: tuple[float, float]) -> None:
        self.frames, self.crop_px, self.rescale, self.rng = frames, crop_px, rescale, frames.rng

    def pair(self, sample: Sample | PolygonImage) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(sample, PolygonImage):
            image, masks = rescaled_crop(
                sample.image, sample.polygons, sample.boxes, self.crop_px, self.rescale, self.rng
            )
            targets = targets_from_instances(masks, image.shape)
        else:
            image, targets = sample.image, sample.targets
        return random_crop(*augment(image, targets, self.rng), self.crop_px, self.rng)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.pair(self.frames.draw()) for _ in range(size)]
        return to_tensors([p[0] for p in pairs], [p[1] for p in pairs])


def to_tensors(images: list[np.ndarray], targets: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.stack(images)[:, None].astype(np.float32))
    y = torch.from_numpy(np.stack(targets).astype(np.float32))
    return x, y


def validation_set(sim_px: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed, unaugmented simulated validation frames (VAL_SEEDS): the same for every run, so
    runs compare; real images are judged through the served path (``loopstream.models.evaluate``)."""
    from loopstream.core.imaging import standardise

    rng = np.random.default_rng(12345)
    samples = [simulated_sample(seed, rng, (sim_px, sim_px)) for seed in VAL_SEEDS]
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

    frames = TrainingFrames(
        real_training_images(args.coco, args.exclude_ids), args.sim_fraction, args.sim_px, rng
    )
    model = build_model(args.arch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    run = TrainingRun(args, model, optimizer, rng, LOG_COLUMNS)
    if not args.resume and args.init is not None:
        model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=False)["model"])
    source = BatchSource(frames, args.crop_px, (args.rescale[0], args.rescale[1]))
    val_frames = validation_set(args.sim_px)

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
