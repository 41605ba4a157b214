"""Training CLI for the instance model (``python -m loopstream.models.train_instance``).

Mask R-CNN needs per-loop targets (boxes and masks), not the semantic models' foreground / core
maps, so it has its own loop; it reuses the semantic side's data (``loopstream.models.datasets``:
simulator frames with truth, COCO images with ``--exclude-ids`` never read), augmentation
(``loopstream.models.augment``, applied to the stack of instance masks) and learning-rate
schedule, checkpoints and resumption (``loopstream.models.training_run``: warm-up, cosine, ends on
``--steps`` or ``--max-minutes``, whichever first).

``--init-encoder`` starts the ResNet-18 stages from a semantic ``unet_r18`` checkpoint (ours,
trained here): with no downloadable weights, a backbone that has already seen loops is the
cheapest head start on a 2-core CPU. Its grey 1-channel stem becomes the 3-channel stem of the
replicated input by dividing it by 3 (exactly the same response).

``--init`` fine-tunes an instance checkpoint instead (ours, the half-precision weights shipped in
``models/checkpoints``, or an imported detectron2 model): the reference's use case of adapting a
model to a new alloy from a few annotated images. BatchNorm statistics stay those of the
checkpoint, and ``last.pt`` records what rebuilds the model (architecture, spec overrides,
anchors), so ``export_instance`` exports it as it exports the original.

Outputs in ``--out``: ``last.pt`` ({"arch", "model", "optimizer", "step", "elapsed_s", "rng", "args"}),
``metrics.csv`` (step, mean of each loss over the last ``--log-every`` steps, lr, elapsed s).

Example (the shipped model; creme images 3, 7, 11 held out)::

    python -m loopstream.models.train_instance --out runs/instance --max-minutes 20 \\
        --coco ../shared/data/creme-ds25s/train/annotations.json --exclude-ids 3,7,11 \\
        --init-encoder runs/pre/last.pt

Fine-tuning the shipped model on a new alloy's annotated images::

    python -m loopstream.models.train_instance --out runs/alloy \\
        --init models/checkpoints/loops_instance_v2.pt --coco alloy/annotations.json \\
        --sim-fraction 0.3 --lr 1e-4 --max-minutes 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from loopstream.models.augment import augment, random_crop, rescaled_crop
from loopstream.models.datasets import PolygonImage, Sample, TrainingFrames, real_training_images
from loopstream.models.export_instance import load_instance_checkpoint
from loopstream.models.maskrcnn import LoopMaskRCNN, build_maskrcnn
from loopstream.models.training_run import (
    TrainingRun,
    add_real_data_arguments,
    check_real_data_arguments,
    checkpoint_header,
)

LOSSES = ["loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"]
MIN_AREA_PX = 6  # a loop cut by a crop to fewer pixels than this is no loop to learn from


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="run directory (last.pt, metrics.csv)")
    p.add_argument("--arch", default="maskrcnn_r18", help="loopstream.models.maskrcnn architecture")
    add_real_data_arguments(p, rescale=(0.5, 2.0), sim_fraction=0.5)
    p.add_argument("--crop-px", type=int, default=256, help="side of training crops and simulated frames")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps of the whole run")
    p.add_argument("--max-minutes", type=float, help="wall-time budget (min), the run anneals to it")
    p.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate")
    p.add_argument("--init-encoder", type=Path, help="semantic unet_r18 checkpoint for the ResNet stages")
    p.add_argument(
        "--init",
        type=Path,
        help="instance checkpoint to fine-tune (train_instance, --slim-checkpoint or detectron2_import)",
    )
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    p.add_argument("--log-every", type=int, default=10, help="steps between log rows and checkpoints")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (augmentation too)")
    p.add_argument("--device", default="cpu", help="torch device of the network: cpu, or cuda on a GPU")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here; train with --device cpu")
    check_real_data_arguments(p, args)
    if args.init is not None and args.init_encoder is not None:
        p.error("--init already sets every weight; --init-encoder would overwrite the backbone's")
    return args


def instance_target(masks: np.ndarray) -> dict[str, torch.Tensor]:
    """torchvision detection target of a stack of loop masks [K, H, W]: boxes cover the pixels
    (x1 = last column + 1), tiny remnants of cropped loops are dropped."""
    keep = [m for m in masks if np.count_nonzero(m) >= MIN_AREA_PX]
    boxes = []
    for m in keep:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    h, w = masks.shape[1:]
    return dict(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.ones(len(keep), dtype=torch.int64),
        masks=torch.from_numpy(np.stack(keep).astype(np.uint8) if keep else np.zeros((0, h, w), np.uint8)),
    )


def training_pair(
    sample: Sample | PolygonImage,
    crop_px: int,
    rescale: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    """Augmented, standardised ``crop_px`` square crop of a sample and its instance target; real
    frames are rescaled first by a random factor in ``rescale`` (log-uniform, ``--rescale``)."""
    if isinstance(sample, PolygonImage):
        image, masks = rescaled_crop(sample.image, sample.polygons, sample.boxes, crop_px, rescale, rng)
    else:
        image = sample.image
        masks = (
            np.stack(sample.instances).astype(np.uint8)
            if sample.instances
            else np.zeros((0, *sample.image.shape), np.uint8)
        )
    image, masks = random_crop(*augment(image, masks, rng), crop_px, rng)
    return image, instance_target(masks)


def init_encoder(model: LoopMaskRCNN, checkpoint: Path) -> int:
    """Copy a semantic U-Net's ``encoder.*`` ResNet weights into the backbone; returns the count."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    body = model.backbone.body.state_dict()
    loaded = {}
    for key, value in state.items():
        name = key.removeprefix("encoder.")
        if key.startswith("encoder.") and name in body:
            if name == "conv1.weight" and value.shape[1] == 1:
                value = value.repeat(1, 3, 1, 1) / 3.0  # grey replicated to 3 channels
            loaded[name] = value
    model.backbone.body.load_state_dict(loaded, strict=False)
    return len(loaded)


def keep_batchnorm_statistics(model: torch.nn.Module) -> None:
    """Fine-tuning: normalise with the statistics the model was trained with, as detectron2 always
    does; a few small crops per batch from a handful of images would estimate them badly."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    frames = TrainingFrames(
        real_training_images(args.coco, args.exclude_ids), args.sim_fraction, args.crop_px, rng
    )
    header = {"arch": args.arch}
    model = build_maskrcnn(args.arch)
    if args.init is not None:
        header, model = checkpoint_header(args.init), load_instance_checkpoint(args.init)
        args.arch = header["arch"]
    device = torch.device(args.device)
    model.to(device)  # before the optimiser, so resumed optimiser state lands on the device too
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], args.lr, weight_decay=1e-4
    )
    run = TrainingRun(args, model, optimizer, rng, ["step", *LOSSES, "loss", "lr", "elapsed_s"], header)
    if not args.resume and args.init_encoder is not None:
        print(f"backbone tensors from {args.init_encoder}: {init_encoder(model, args.init_encoder)}")

    model.train()
    if args.init is not None:
        keep_batchnorm_statistics(model)
    recent: list[list[float]] = []
    rescale = (args.rescale[0], args.rescale[1])
    with tqdm(total=args.steps, initial=run.step, unit="step") as bar:
        while not run.done:
            lr = run.set_learning_rate()
            pairs = [training_pair(frames.draw(), args.crop_px, rescale, rng) for _ in range(args.batch_size)]
            images = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None]).to(device)
            targets = [{k: v.to(device) for k, v in p[1].items()} for p in pairs]
            losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            run.step += 1
            recent.append([losses[k].item() for k in LOSSES])
            bar.update(1)
            bar.set_postfix(loss=f"{np.sum(np.mean(recent, axis=0)):.3f}", lr=f"{lr:.2g}")
            if run.step % args.log_every == 0 or run.done:
                means = np.mean(recent, axis=0)
                run.log(
                    [
                        run.step,
                        *np.round(means, 4),
                        round(float(means.sum()), 4),
                        f"{lr:.3g}",
                        round(run.elapsed(), 1),
                    ]
                )
                recent = []
                run.save()
    run.close()


if __name__ == "__main__":
    main()
