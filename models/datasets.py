"""Training and evaluation samples: real COCO-annotated frames and simulated frames with truth.

A sample is a raw camera frame (any dtype) with its [2, H, W] foreground/core targets; augmentation
and standardisation happen later (``loopstream.models.augment``) so evaluation sees raw frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from pycocotools.coco import COCO

from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.models.targets import draw_ellipse, targets_from_ellipses, targets_from_instances

# Simulator seeds of training frames; seeds below 10000 are left to evaluation and tests, so no
# evaluated frame was ever trained on.
TRAIN_SEEDS = (1_000_000, 2_000_000)


@dataclass
class Sample:
    name: str
    image: np.ndarray  # raw frame [H, W]
    targets: np.ndarray  # uint8 [2, H, W]: foreground, core
    instances: list[np.ndarray] = field(default_factory=list)  # binary mask per loop (for metrics)


class CocoLoops:
    """Images and instance masks of a COCO dataset (e.g. creme-ds25s), all categories as loops.

    ``images_dir`` defaults to an ``imgs`` folder beside the annotation file (creme's layout), else
    the annotation file's folder. ``exclude_ids`` are never read: that is how held-out test images
    stay out of training.
    """

    def __init__(
        self,
        annotations: str | Path,
        images_dir: str | Path | None = None,
        include_ids: list[int] | None = None,
        exclude_ids: list[int] | None = None,
    ) -> None:
        annotations = Path(annotations)
        if images_dir is None:
            images_dir = annotations.parent / "imgs"
            if not images_dir.is_dir():
                images_dir = annotations.parent
        self.images_dir = Path(images_dir)
        self.coco = COCO(str(annotations))
        ids = sorted(self.coco.getImgIds()) if include_ids is None else list(include_ids)
        self.ids = [i for i in ids if i not in set(exclude_ids or [])]

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, image_id: int) -> Sample:
        info = self.coco.loadImgs(image_id)[0]
        path = self.images_dir / info["file_name"]
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise FileNotFoundError(path)
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=None))
        instances = [self.coco.annToMask(a).astype(bool) for a in anns]
        targets = targets_from_instances(instances, image.shape)
        return Sample(Path(info["file_name"]).stem, image, targets, instances)

    def samples(self) -> list[Sample]:
        return [self.sample(i) for i in self.ids]


def random_simulation_config(rng: np.random.Generator, shape: tuple[int, int]) -> SimulationConfig:
    """Domain randomisation around the simulator's defaults: density, size, contrast, noise.

    Half of the configurations are the defaults (what the end-to-end tests replay), the rest
    spread the appearance towards harder real images (fainter, noisier, denser loops).
    """
    base = SimulationConfig(shape=shape, dtype=str(rng.choice(["uint8", "uint16"])))
    if rng.random() < 0.5:
        return base
    small = rng.uniform(8.0, 16.0)
    return replace(
        base,
        initial_loops=int(rng.integers(6, 36)),
        initial_major_px=(small, small + rng.uniform(20.0, 40.0)),
        aspect_range=(0.45, 0.95),
        loop_contrast=float(rng.uniform(0.15, 0.45)),
        noise_sigma=float(rng.uniform(10.0, 40.0)),
        bend_contours=int(rng.integers(0, 6)),
    )


def simulated_sample(seed: int, rng: np.random.Generator, shape: tuple[int, int] = (512, 512)) -> Sample:
    """One frame of a randomly configured simulated experiment with seed ``seed``.

    Targets are the truth loops (centre inside the frame), the convention the tests count by and
    the one tiled serving keeps (a loop belongs to the tile holding its centre).
    """
    config = random_simulation_config(rng, shape)
    frame = SimulatedMicroscope(config, seed).frame(int(rng.integers(config.n_frames)))
    return Sample(
        f"sim-{seed}-{frame.index}",
        frame.image,
        targets_from_ellipses(frame.truth, shape),
        instances_from_ellipses(frame.truth, shape),
    )


def instances_from_ellipses(loops: pd.DataFrame, shape: tuple[int, int]) -> list[np.ndarray]:
    """One binary mask per loop ellipse."""
    masks = []
    for loop in loops.itertuples(index=False):
        mask = np.zeros(shape, np.uint8)
        draw_ellipse(mask, loop.x_px, loop.y_px, loop.major_px, loop.minor_px, loop.angle_deg)
        masks.append(mask.astype(bool))
    return masks


@dataclass
class PolygonImage:
    """A real frame with its loops as polygons in px (not masks): a 2048² frame with 500 loops as
    full-size masks would take 2 GB, and a training crop rasterises only the loops it holds."""

    name: str
    image: np.ndarray  # raw frame [H, W]
    polygons: list[np.ndarray]  # float32 [K, 2] (x, y) per loop, one outline each
    boxes: np.ndarray  # float32 [N, 4] x0, y0, x1, y1 of each polygon, for cropping


def polygon_images(coco: CocoLoops) -> list[PolygonImage]:
    """Every image of ``coco`` with its loops' outlines (the largest polygon of each annotation)."""
    out = []
    for image_id in coco.ids:
        info = coco.coco.loadImgs(image_id)[0]
        image = cv2.imread(str(coco.images_dir / info["file_name"]), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise FileNotFoundError(coco.images_dir / info["file_name"])
        polygons = []
        for ann in coco.coco.loadAnns(coco.coco.getAnnIds(imgIds=image_id, iscrowd=None)):
            rings = [np.asarray(r, np.float32).reshape(-1, 2) for r in ann["segmentation"]]
            polygons.append(max(rings, key=len))
        boxes = np.array([[*p.min(0), *p.max(0)] for p in polygons], np.float32).reshape(-1, 4)
        out.append(PolygonImage(Path(info["file_name"]).stem, image, polygons, boxes))
    return out


def real_training_images(
    coco_files: Sequence[Path], exclude_ids: Sequence[list[int]]
) -> list[list[PolygonImage]]:
    """The training images of each COCO file (``exclude_ids[i]`` of the i-th never read), as
    polygons: one list per dataset, so each dataset can be drawn equally often."""
    datasets = []
    for coco_file, exclude in zip(coco_files, exclude_ids, strict=True):
        datasets.append(polygon_images(CocoLoops(coco_file, exclude_ids=exclude)))
        print(f"real training images of {coco_file}: {[s.name for s in datasets[-1]]}")
    return datasets


class TrainingFrames:
    """Where each training frame comes from, for both trainers: a fresh simulated ``sim_px`` square
    frame with probability ``sim_fraction`` (always, without real data), else a dataset of ``real``
    drawn equally, then one of its images drawn equally: 9 creme images weigh as much as 16 Ti
    frames holding 50 times more loops."""

    def __init__(
        self,
        real: Sequence[Sequence[Sample | PolygonImage]],
        sim_fraction: float,
        sim_px: int,
        rng: np.random.Generator,
    ) -> None:
        self.real = [dataset for dataset in real if dataset]
        self.sim_fraction, self.sim_px, self.rng = sim_fraction, sim_px, rng

    def draw(self) -> Sample | PolygonImage:
        if not self.real or self.rng.random() < self.sim_fraction:
            seed = int(self.rng.integers(*TRAIN_SEEDS))
            return simulated_sample(seed, self.rng, (self.sim_px, self.sim_px))
        dataset = self.real[int(self.rng.integers(len(self.real)))]
        return dataset[int(self.rng.integers(len(dataset)))]
