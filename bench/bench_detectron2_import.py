"""Speed of an imported detectron2 R50-FPN Mask R-CNN per 512² tile: creme's configuration
against detectron2's defaults, under ONNX Runtime and eager PyTorch, in one run.

creme runs its checkpoints with 7 aspect ratios per anchor, p2 given to the RPN twice, 4,000 /
2,000 RPN proposals before / after NMS and 512 px tiles resized to 800 px: far more work per
tile than detectron2's defaults (3 ratios, 1,000 / 1,000, native size). Issue 18 measured the
imported network at 3.0 s per tile under ONNX Runtime against 8.3 s for detectron2 run the creme
way (random weights, ~450 detections per tile); this benchmark re-measures our side of that.

Each checkpoint is written in detectron2's names and shapes from a randomly initialised model of
the configuration (seeded), then goes through the importer CLI (``--config``, ``--onnx``) exactly
as a user's ``model_final.pth`` would. Input: one real 512² creme-ds25s tile as 8-bit counts.

    .venv/bin/python bench/bench_detectron2_import.py --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from timing import best_seconds  # this folder is on sys.path when a benchmark runs

from loopstream.models.detectron2_import import ARCH, config_overrides, name_map
from loopstream.models.detectron2_import import main as import_main
from loopstream.models.export_instance import load_instance_checkpoint, onnx_tile_fn, torch_tile_fn
from loopstream.models.maskrcnn import build_maskrcnn

ROOT = Path(__file__).resolve().parents[1]
TILE = ROOT.parent / "shared" / "data" / "creme-ds25s" / "train" / "imgs" / "3.png"

# What creme's config.yaml sets for inference (ai-atoms/creme; issue 18); keys not given take
# detectron2's defaults in the importer. DETECTIONS_PER_IMAGE is raised so that the detections
# of random weights are not capped at detectron2's 100.
CREME = """\
MODEL:
  PIXEL_MEAN: [149.6, 149.6, 149.6]
  PIXEL_STD: [35.6, 35.6, 35.6]
  ANCHOR_GENERATOR:
    SIZES: [[8], [16], [32], [64], [128], [256]]
    ASPECT_RATIOS: [[0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0]]
  RPN:
    IN_FEATURES: [p2, p2, p3, p4, p5, p6]
    PRE_NMS_TOPK_TEST: 4000
    POST_NMS_TOPK_TEST: 2000
  ROI_HEADS:
    NUM_CLASSES: 1
TEST:
  DETECTIONS_PER_IMAGE: 1000
"""
# detectron2's defaults (anchors 32-512, 3 ratios, 1,000 / 1,000, 800 px resize switched off:
# the importer's behaviour without a config), detections capped the same.
DEFAULTS = """\
MODEL:
  PIXEL_MEAN: [149.6, 149.6, 149.6]
  PIXEL_STD: [35.6, 35.6, 35.6]
  ROI_HEADS:
    NUM_CLASSES: 1
INPUT:
  MIN_SIZE_TEST: 0
TEST:
  DETECTIONS_PER_IMAGE: 1000
"""


def detectron2_checkpoint(config: Path, out: Path, seed: int) -> Path:
    """A ``model_final.pth`` in detectron2's names for a random model of ``config``."""
    torch.manual_seed(seed)
    ours = build_maskrcnn(ARCH, **config_overrides(config)[0]).state_dict()
    to_d2 = {ours_name: d2_name for d2_name, ours_name in name_map().items()}
    state = {to_d2[k]: detectron2_layout(to_d2[k], v) for k, v in ours.items() if k in to_d2}
    path = out / "model_final.pth"
    torch.save({"model": state}, path)
    return path


def detectron2_layout(d2_name: str, value: torch.Tensor) -> torch.Tensor:
    """torchvision's 1-class head rows (background first) -> detectron2's (loop first, no
    background rows): what the importer's ``convert`` undoes."""
    if d2_name.startswith("roi_heads.box_predictor.cls_score"):
        return value[[1, 0]]
    if d2_name.startswith(("roi_heads.box_predictor.bbox_pred", "roi_heads.mask_head.predictor")):
        return value[len(value) // 2 :]
    return value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tile = cv2.imread(str(TILE), cv2.IMREAD_GRAYSCALE)[None, None, :512, :512].astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, yaml_text in (("detectron2 defaults", DEFAULTS), ("creme's configuration", CREME)):
            folder = Path(tmp) / name.split()[0]
            folder.mkdir()
            (folder / "config.yaml").write_text(yaml_text)
            checkpoint = detectron2_checkpoint(folder / "config.yaml", folder, args.seed)
            config = ["--config", str(folder / "config.yaml")]
            import_main([str(checkpoint), *config, "--out", str(folder), "--onnx"])
            onnx_run = onnx_tile_fn(folder / "model.onnx", args.threads)
            eager_run = torch_tile_fn(load_instance_checkpoint(folder / "model.pt"))
            detections = len(onnx_run(tile)[1])
            t_onnx = best_seconds(lambda run=onnx_run: run(tile), args.repeats, warm_up=True)
            t_eager = best_seconds(lambda run=eager_run: run(tile), args.repeats, warm_up=True)
            rows.append((name, detections, t_onnx, t_eager))
    base = rows[0][2]
    print(
        f"\n| import ({args.threads} threads, random weights, seed {args.seed}) | detections per tile "
        "| ONNX Runtime s / tile | eager PyTorch s / tile | ONNX Runtime x defaults |"
    )
    print("|---|---|---|---|---|")
    for name, detections, t_onnx, t_eager in rows:
        print(f"| {name} | {detections} | {t_onnx:.2f} | {t_eager:.2f} | {t_onnx / base:.2f} |")


if __name__ == "__main__":
    main()
