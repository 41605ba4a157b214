"""Training really trains, the CLI checkpoints and resumes, and real targets match the data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from loopstream.models.architectures import build_model
from loopstream.models.datasets import CocoLoops, TrainingFrames, real_training_images, simulated_sample
from loopstream.models.losses import segmentation_loss
from loopstream.models.predict import load_checkpoint_model
from loopstream.models.train import BatchSource, main, parse_args
from loopstream.models.training_run import checkpoint_header, learning_rate, write_slim_checkpoint
from tests.conftest import CREME


def test_a_few_steps_on_simulated_frames_lower_the_loss():
    """25 steps of 6 frames of 96 px, simulated, lower the loss on other simulated frames."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = build_model("unet_r18")
    rng = np.random.default_rng(0)
    pool = [simulated_sample(seed, rng, (96, 96)) for seed in range(1_000_000, 1_000_032)]
    train = BatchSource(TrainingFrames([pool], 0.0, 96, rng), 96, (1.0, 1.0))  # augmented draws from pool
    held_out = BatchSource(TrainingFrames([], 1.0, 96, np.random.default_rng(99)), 96, (1.0, 1.0)).batch(8)

    def held_out_loss() -> float:
        with torch.no_grad():  # train-mode BatchNorm: batch statistics, no dependence on running means
            return float(segmentation_loss(model(held_out[0]), held_out[1]))

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = held_out_loss()
    for _ in range(25):
        x, y = train.batch(6)
        loss = segmentation_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_loss()
    assert after < 0.8 * before, (before, after)


def test_cli_writes_metrics_and_checkpoint_and_resumes(tmp_path):
    out = tmp_path / "run"
    common = ["--out", str(out), "--sim-px", "64", "--batch-size", "2", "--val-every", "2", "--threads", "2"]
    main([*common, "--steps", "2"])
    first = torch.load(out / "last.pt", weights_only=False)
    assert first["step"] == 2
    main([*common, "--steps", "5", "--resume"])  # an interrupted run, continued (and here extended)
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 5 and state["elapsed_s"] > first["elapsed_s"]
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["split"]) for r in rows] == [
        ("2", "train"),
        ("2", "val"),
        ("4", "train"),
        ("4", "val"),
        ("5", "train"),
        ("5", "val"),
    ]
    assert all(np.isfinite(float(r["loss"])) for r in rows)


def test_simulated_targets_cover_truth_loops():
    sample = simulated_sample(7, np.random.default_rng(7), (128, 128))
    foreground, core = sample.targets.astype(bool)
    assert foreground.any()
    assert not (core & ~foreground).any()  # cores lie inside loops
    assert 0.15 < core.sum() / foreground.sum() < 0.4  # both axes at 50 %: ~25 % of the area


@pytest.mark.skipif(not CREME.exists(), reason=f"no creme-ds25s data at {CREME}")
def test_real_targets_match_the_union_masks_and_held_out_ids_are_not_read():
    coco = CocoLoops(CREME, exclude_ids=[3, 7, 11])
    assert 3 not in coco.ids and len(coco.ids) == 9
    sample = coco.sample(8)
    union = cv2.imread(str(CREME.parent / "masks" / "8.png"), cv2.IMREAD_GRAYSCALE) > 0
    foreground, core = sample.targets.astype(bool)
    iou = (foreground & union).sum() / (foreground | union).sum()
    assert iou > 0.85, iou  # annToMask and the PNG masks rasterise the polygons slightly differently
    assert len(sample.instances) == 22
    n_cores = cv2.connectedComponents(core.astype(np.uint8))[0] - 1
    assert n_cores >= 18  # touching loops keep separate cores (a few tiny ones may merge or vanish)


def test_learning_rate_warms_up_then_anneals():
    peak = 1e-3
    rates = [learning_rate(p, peak) for p in np.linspace(0, 1, 101)]
    top = int(np.argmax(rates))
    assert rates[top] == pytest.approx(peak) and top == 5
    assert rates[0] == pytest.approx(0.01 * peak) and rates[-1] == pytest.approx(0.01 * peak)
    assert np.all(np.diff(rates[top:]) <= 0)


def test_slim_checkpoint_holds_the_rounded_weights_it_leaves_in_the_model(tmp_path):
    torch.manual_seed(3)
    model = build_model("unet_r18").eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        before = model(x)
    path = tmp_path / "slim.pt"
    rounded = write_slim_checkpoint(model, {"arch": "unet_r18"}, path)
    assert checkpoint_header(path) == {"arch": "unet_r18"}
    assert torch.load(path, weights_only=False)["model"]["encoder.conv1.weight"].dtype == torch.float16
    assert path.stat().st_size < 0.6 * sum(t.numel() * 4 for t in model.state_dict().values())
    with torch.no_grad():
        after, loaded = rounded(x), load_checkpoint_model(path)(x)
    assert torch.equal(after, loaded), "the shipped weights compute what the exported model computes"
    assert 0 < float((after - before).abs().max()) < 1e-2 * float(before.abs().max())


def write_disc_grid_coco(folder: Path, n_images: int, pitch_px: int = 20, radius_px: int = 5) -> Path:
    """A COCO dataset of ``n_images`` 256 px frames (ids 1..n): dark discs on a regular grid, each
    annotated as a polygon, so every window of any frame holds the same density of loops."""
    (folder / "imgs").mkdir(parents=True)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        frame = np.full((256, 256), 180, np.uint8)
        for y in range(pitch_px // 2, 256, pitch_px):
            for x in range(pitch_px // 2, 256, pitch_px):
                cv2.circle(frame, (x, y), radius_px, (60,), -1)
                ring = np.stack([x + radius_px * np.cos(angles), y + radius_px * np.sin(angles)], 1)
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                     "segmentation": [ring.ravel().round(2).tolist()], "area": np.pi * radius_px**2,
                     "bbox": [x - radius_px, y - radius_px, 2 * radius_px, 2 * radius_px]}
                )  # fmt: skip
        cv2.imwrite(str(folder / "imgs" / f"{image_id}.png"), frame)
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 256, "height": 256})
    path = folder / "annotations.json"
    categories = [{"id": 1, "name": "loop"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def mean_component_area(targets: np.ndarray) -> float:
    n, _, stats, _ = cv2.connectedComponentsWithStats(targets[0].astype(np.uint8))
    return float(stats[1:, cv2.CC_STAT_AREA].mean()) if n > 1 else 0.0


def test_real_crops_of_several_datasets_are_drawn_equally_rescaled_and_aligned(tmp_path):
    """Two datasets of 3 and 1 training images are drawn half-half; held-out ids are never read;
    each crop's targets lie on the loops it shows, at the scale it was drawn at."""
    large = write_disc_grid_coco(tmp_path / "large", 4)
    small = write_disc_grid_coco(tmp_path / "small", 2)
    real = real_training_images([large, small], [[2], [1]])
    assert [[image.name for image in dataset] for dataset in real] == [["1", "3", "4"], ["2"]]
    frames = TrainingFrames(real, sim_fraction=0.0, sim_px=64, rng=np.random.default_rng(0))
    draws = [frames.draw() for _ in range(400)]
    assert 0.42 < np.mean([d is real[1][0] for d in draws]) < 0.58

    areas = {}
    for scale in (1.0, 2.0):
        source = BatchSource(TrainingFrames(real, 0.0, 64, np.random.default_rng(1)), 64, (scale, scale))
        pairs = [source.pair(real[0][0]) for _ in range(12)]
        for image, targets in pairs:
            foreground, core = targets.astype(bool)
            assert image.shape == foreground.shape == (64, 64)
            assert foreground.any() and not (core & ~foreground).any()
            assert image[foreground].mean() < image[~foreground].mean() - 1.0  # dark loops, where drawn
        areas[scale] = np.mean([mean_component_area(t) for _, t in pairs])
    assert 2.5 < areas[2.0] / areas[1.0] < 5.0, areas  # loops seen at twice their size: 4x the area


def test_several_datasets_train_from_the_cli_and_bad_data_options_are_refused(tmp_path):
    a, b = write_disc_grid_coco(tmp_path / "a", 2), write_disc_grid_coco(tmp_path / "b", 2)
    out = tmp_path / "run"
    main(
        ["--out", str(out), "--coco", str(a), "--exclude-ids", "2", "--coco", str(b), "--sim-fraction", "0.5",
         "--rescale", "0.75", "1.5", "--sim-px", "64", "--crop-px", "64", "--batch-size", "2", "--steps", "2",
         "--threads", "2"]
    )  # fmt: skip
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 2 and state["args"]["exclude_ids"] == [[2], []]
    assert state["args"]["rescale"] == [0.75, 1.5]
    for bad in (
        ["--sim-fraction", "0.5"],  # real frames asked for, none given
        ["--coco", str(a), "--exclude-ids", "1", "--exclude-ids", "2"],  # more exclude lists than datasets
        ["--coco", str(a), "--rescale", "0", "1"],
        ["--coco", str(a), "--rescale", "2", "1"],
        ["--coco", str(a), "--sim-fraction", "1.5"],
    ):
        with pytest.raises(SystemExit):
            parse_args(["--out", str(out), *bad])
