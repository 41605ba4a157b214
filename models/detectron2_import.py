"""Import a detectron2 R50-FPN Mask R-CNN checkpoint (ai-atoms/creme) as a loopstream model.

``python -m loopstream.models.detectron2_import model_final.pth --config config.yaml --out build/d2 [--onnx]``

``--config`` is the detectron2 config YAML that training saves beside ``model_final.pth`` (creme's
``config.yaml``, a full ``cfg.dump()``); every inference setting is read from it
(``config_overrides``), and a key it lacks takes detectron2's default (``D2_DEFAULTS``).

detectron2 cannot be installed here, so its checkpoints (``{"model": state_dict}``, config from
``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml``, 1 class) are served by mapping every
tensor onto ``loopstream.models.maskrcnn`` (``maskrcnn_r50``), built to compute what detectron2's
``GeneralizedRCNN`` computes in inference. What detectron2 does differently from torchvision's
Mask R-CNN, and how each difference is implemented:

1. ResNet "MSRA" bottlenecks (``RESNETS.STRIDE_IN_1X1=True``): the stride-2 of stages res3-res5
   is in the first 1x1 conv, not the 3x3 (``MaskRCNNSpec.stride_in_1x1``).
2. FrozenBN everywhere (``RESNETS.NORM="FrozenBN"``, stem included): ``FrozenBatchNorm2d``
   (eps 1e-5, as detectron2's) on every backbone norm; FPN and heads have none.
3. ROIAlignV2 (``POOLER_TYPE="ROIAlignV2"``): ``aligned=True``, ``sampling_ratio=0``, 7x7 box and
   14x14 mask pooling over P2-P5, level ``floor(4 + log2(sqrt(area) / 224 + 1e-8))``
   (``maskrcnn.AlignedRoIPooler``).
4. Class order: detectron2's ``cls_score`` [2, 1024] is (loop, background), background LAST;
   torchvision's is (background, loop): the rows are swapped. Its ``bbox_pred`` [4, 1024] holds
   only the loop's class-specific deltas (no background regressor); torchvision's [8, 1024] gets
   zeros for the background rows it never uses. Likewise the mask ``predictor`` [1, 256, 1, 1]
   becomes the loop channel of torchvision's 2-channel ``mask_fcn_logits``.
5. Input: detectron2 takes BGR 0-255 and normalises by ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``;
   creme's grey frames are replicated to BGR, so the model takes ``image`` [1, 1, H, W] in
   8-bit grey counts and normalises each replicated channel by the BGR mean / std inside the
   graph (default 149.6 / 35.6; the checkpoint's ``pixel_mean`` / ``pixel_std`` buffers win
   when it stores them, ``--pixel-mean`` / ``--pixel-std`` over both).
6. Anchors: detectron2's cell anchors (corners not rounded; sizes then ratios), offset 0.0,
   ``ANCHOR_GENERATOR.SIZES`` and ``ASPECT_RATIOS`` per RPN input level (one list broadcast to
   every level, as detectron2 does), on the levels ``RPN.IN_FEATURES`` names, in its order and
   repeats (creme: p2, p2, p3, p4, p5, p6 with sizes 8, 16, 32, ... and 7 ratios 0.1-10; each
   feature map keeps its level's stride, so p2 carries anchors 8 and 16 at stride 4); without a
   config, sizes per P2-P6 from ``--anchor-sizes``. A checkpoint that stores its cell anchors
   (older detectron2) has them used as they are.
7. Masks: sigmoid of the loop channel on 28x28, pasted at pixel centres inside the box and
   thresholded at 0.5 (``loopstream.serving.instance_merge.paste_mask``, detectron2's
   ``paste_masks_in_image``), outside the exported graph.
8. Test-time resize as detectron2's DefaultPredictor does (``INPUT.MIN_SIZE_TEST`` /
   ``MAX_SIZE_TEST``, default 800 / 1333; 0 = none): inside the model, bilinear, zero padding to
   multiples of 32 after normalisation, boxes mapped back to the tile's px per axis
   (``maskrcnn.LoopMaskRCNN._test_resize``). A 512 px serving tile becomes 800 px, as in creme.
   Without a config: no resize (native tiles, the behaviour of earlier imports).
9. Test settings from the config: box score > ``ROI_HEADS.SCORE_THRESH_TEST``, per-class box NMS
   ``ROI_HEADS.NMS_THRESH_TEST``, RPN ``PRE_NMS_TOPK_TEST`` per level / ``POST_NMS_TOPK_TEST``
   after NMS ``RPN.NMS_THRESH`` (creme: 4000 / 2000), ``TEST.DETECTIONS_PER_IMAGE`` per image
   (without a config: 0.05, 0.5, 1000 / 1000, 0.7 and ``--detections``, default 512 as in the
   reference work).

Known residual differences from torchvision internals: proposals and final boxes narrower than
1e-3 / 1e-2 px are dropped (detectron2 drops only empty ones) - irrelevant for real boxes.

Output in ``--out``: ``model.pt`` (loadable by ``loopstream.models.export_instance``) and, with
``--onnx``, ``model.onnx`` (contract in ``loopstream.models.export_instance``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from loopstream.models.export_instance import export_onnx
from loopstream.models.maskrcnn import LoopMaskRCNN, build_maskrcnn

ARCH = "maskrcnn_r50"
R50_BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}  # residual blocks per stage res2-res5
CREME_PIXEL_MEAN, CREME_PIXEL_STD = 149.6, 35.6  # 8-bit grey, replicated to B, G, R
DEFAULT_ANCHOR_SIZES = "32;64;128;256;512"
NORM_FIELDS = ("weight", "bias", "running_mean", "running_var")
IGNORED = re.compile(r"^(pixel_mean|pixel_std|proposal_generator\.anchor_generator\.cell_anchors\.\d+)$")


# detectron2's defaults (detectron2/config/defaults.py) for every key the import reads
D2_DEFAULTS: dict[str, object] = {
    "MODEL.ANCHOR_GENERATOR.SIZES": [[32], [64], [128], [256], [512]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.ANCHOR_GENERATOR.OFFSET": 0.0,
    "MODEL.RPN.IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"],
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.NMS_THRESH": 0.7,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05,
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": 0.5,
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    "MODEL.ROI_HEADS.IN_FEATURES": ["p2", "p3", "p4", "p5"],
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "TEST.DETECTIONS_PER_IMAGE": 100,
}


class CheckpointError(ValueError):
    """The checkpoint is not a 1-class detectron2 R50-FPN Mask R-CNN; the message says why."""


def name_map() -> dict[str, str]:
    """detectron2 tensor name -> loopstream tensor name, for every tensor of a 1-class
    R50-FPN Mask R-CNN (class-layout conversions are in ``convert``)."""
    m: dict[str, str] = {"backbone.bottom_up.stem.conv1.weight": "backbone.body.conv1.weight"}
    for f in NORM_FIELDS:
        m[f"backbone.bottom_up.stem.conv1.norm.{f}"] = f"backbone.body.bn1.{f}"
    for stage, blocks in R50_BLOCKS.items():
        for b in range(blocks):
            d2, ours = f"backbone.bottom_up.res{stage}.{b}", f"backbone.body.layer{stage - 1}.{b}"
            for i in (1, 2, 3):
                m[f"{d2}.conv{i}.weight"] = f"{ours}.conv{i}.weight"
                for f in NORM_FIELDS:
                    m[f"{d2}.conv{i}.norm.{f}"] = f"{ours}.bn{i}.{f}"
            if b == 0:
                m[f"{d2}.shortcut.weight"] = f"{ours}.downsample.0.weight"
                for f in NORM_FIELDS:
                    m[f"{d2}.shortcut.norm.{f}"] = f"{ours}.downsample.1.{f}"
    for level in (2, 3, 4, 5):
        for p in ("weight", "bias"):
            m[f"backbone.fpn_lateral{level}.{p}"] = f"backbone.fpn.inner_blocks.{level - 2}.0.{p}"
            m[f"backbone.fpn_output{level}.{p}"] = f"backbone.fpn.layer_blocks.{level - 2}.0.{p}"
    heads = {
        "proposal_generator.rpn_head.conv": "rpn.head.conv.0.0",
        "proposal_generator.rpn_head.objectness_logits": "rpn.head.cls_logits",
        "proposal_generator.rpn_head.anchor_deltas": "rpn.head.bbox_pred",
        "roi_heads.box_head.fc1": "roi_heads.box_head.fc6",
        "roi_heads.box_head.fc2": "roi_heads.box_head.fc7",
        "roi_heads.box_predictor.cls_score": "roi_heads.box_predictor.cls_score",
        "roi_heads.box_predictor.bbox_pred": "roi_heads.box_predictor.bbox_pred",
        **{f"roi_heads.mask_head.mask_fcn{i}": f"roi_heads.mask_head.{i - 1}.0" for i in (1, 2, 3, 4)},
        "roi_heads.mask_head.deconv": "roi_heads.mask_predictor.conv5_mask",
        "roi_heads.mask_head.predictor": "roi_heads.mask_predictor.mask_fcn_logits",
    }
    for d2, ours in heads.items():
        for p in ("weight", "bias"):
            m[f"{d2}.{p}"] = f"{ours}.{p}"
    return m


def convert(d2_name: str, value: torch.Tensor) -> torch.Tensor:
    """detectron2's 1-class head layouts -> torchvision's (background first, background rows)."""
    if d2_name.startswith("roi_heads.box_predictor.cls_score"):
        if value.shape[0] != 2:
            raise CheckpointError(
                f"{d2_name} has shape {tuple(value.shape)}: {value.shape[0] - 1} classes + background; "
                "loopstream imports 1-class (loop) checkpoints, cls_score [2, 1024]"
            )
        return value[[1, 0]]  # (loop, background) -> (background, loop)
    if d2_name.startswith("roi_heads.box_predictor.bbox_pred"):
        if value.shape[0] != 4:
            raise CheckpointError(
                f"{d2_name} has shape {tuple(value.shape)}; a 1-class checkpoint has class-specific "
                "bbox_pred [4, 1024] (CLS_AGNOSTIC_BBOX_REG=False)"
            )
        return torch.cat([torch.zeros_like(value), value])
    if d2_name.startswith("roi_heads.mask_head.predictor"):
        if value.shape[0] != 1:
            raise CheckpointError(
                f"{d2_name} has shape {tuple(value.shape)}; a 1-class checkpoint has predictor [1, 256, 1, 1]"
            )
        return torch.cat([torch.zeros_like(value), value])
    return value


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``model`` state dict of a detectron2 checkpoint (tensors only; numpy arrays accepted)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle with more than tensors: never executed, say what to do
        raise CheckpointError(
            f"{path} is not a plain tensor checkpoint ({error.__class__.__name__}); re-save it with "
            'torch.save({"model": state_dict}, path)'
        ) from error
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state dict (expected {{'model': state_dict}})")
    return {k: torch.as_tensor(v) for k, v in state.items()}


def read_config(path: str | Path) -> dict[str, Any]:
    """The keys the import reads from a detectron2 config YAML (``cfg.dump()``), defaults filled in."""
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise CheckpointError(f"{path}: not a readable detectron2 config YAML ({error})") from error
    if "_BASE_" in tree:
        raise CheckpointError(
            f"{path} inherits from {tree['_BASE_']!r}: give the full config detectron2 saves beside "
            "model_final.pth (config.yaml, written by cfg.dump()), not a base-derived one"
        )
    values: dict[str, Any] = {}  # YAML values: config_overrides checks what it reads
    for dotted, default in D2_DEFAULTS.items():
        node: object = tree
        for part in dotted.split("."):
            node = node.get(part, None) if isinstance(node, dict) else None
        values[dotted] = default if node is None else node
    return values


def config_overrides(path: str | Path) -> tuple[dict, list[float], list[float]]:
    """``MaskRCNNSpec`` overrides, PIXEL_MEAN and PIXEL_STD of a detectron2 config, checked
    against what the import can reproduce."""
    c = read_config(path)
    for key, wanted in (
        ("MODEL.RESNETS.DEPTH", 50),
        ("MODEL.RESNETS.STRIDE_IN_1X1", True),
        ("MODEL.ROI_HEADS.NUM_CLASSES", 1),
        ("MODEL.ANCHOR_GENERATOR.OFFSET", 0.0),
        ("MODEL.ROI_HEADS.IN_FEATURES", ["p2", "p3", "p4", "p5"]),
    ):
        if c[key] != wanted:
            raise CheckpointError(f"{path}: {key} is {c[key]!r}; the import reproduces {wanted!r} only")
    levels = tuple(_level(name, path) for name in c["MODEL.RPN.IN_FEATURES"])
    sizes = [tuple(float(v) for v in group) for group in c["MODEL.ANCHOR_GENERATOR.SIZES"]]
    ratios = [tuple(float(v) for v in group) for group in c["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"]]
    min_size = c["INPUT.MIN_SIZE_TEST"]
    overrides = dict(
        anchor_sizes=tuple(sizes * len(levels) if len(sizes) == 1 else sizes),
        aspect_ratios=tuple(ratios),
        rpn_levels=levels,
        rpn_pre_nms_per_level=int(c["MODEL.RPN.PRE_NMS_TOPK_TEST"]),
        rpn_post_nms=int(c["MODEL.RPN.POST_NMS_TOPK_TEST"]),
        rpn_nms_iou=float(c["MODEL.RPN.NMS_THRESH"]),
        score_threshold=float(c["MODEL.ROI_HEADS.SCORE_THRESH_TEST"]),
        box_nms_iou=float(c["MODEL.ROI_HEADS.NMS_THRESH_TEST"]),
        detections_per_image=int(c["TEST.DETECTIONS_PER_IMAGE"]),
        test_short_side=int(min_size if isinstance(min_size, int) else max(min_size)),
        test_max_side=int(c["INPUT.MAX_SIZE_TEST"]),
    )
    return overrides, list(c["MODEL.PIXEL_MEAN"]), list(c["MODEL.PIXEL_STD"])


def _level(name: str, path: str | Path) -> int:
    match = re.fullmatch(r"p([2-6])", str(name))
    if match is None:
        raise CheckpointError(f"{path}: RPN.IN_FEATURES names {name!r}; an FPN R50 has p2-p6")
    return int(match.group(1))


def parse_anchor_sizes(text: str) -> tuple[tuple[float, ...], ...]:
    """``"32;64;128;256;512"`` (one group per level P2-P6) or ``"8,16,32"`` (one group for every
    level, as detectron2 broadcasts a single list)."""
    groups = tuple(tuple(float(s) for s in g.split(",")) for g in text.split(";"))
    return groups * 5 if len(groups) == 1 else groups


def import_checkpoint(
    path: str | Path,
    anchor_sizes: str = DEFAULT_ANCHOR_SIZES,
    pixel_mean: list[float] | None = None,
    pixel_std: list[float] | None = None,
    detections: int = 512,
    config: str | Path | None = None,
) -> tuple[LoopMaskRCNN, dict]:
    """The eval-mode model computing what detectron2 computes, and the overrides to rebuild it.
    With ``config`` (detectron2's YAML) every inference setting comes from it; ``pixel_mean`` /
    ``pixel_std`` still win over it."""
    state = load_state(path)
    mapping = name_map()
    unexpected = sorted(k for k in state if k not in mapping and not IGNORED.match(k))
    missing = sorted(k for k in mapping if k not in state)
    if unexpected or missing:
        hint = ""
        if any(re.match(r"backbone\.bottom_up\.res4\.(6|[1-9]\d)\.", k) for k in unexpected):
            hint = " (res4 has more than 6 blocks: a ResNet-101 / ResNeXt backbone, not ResNet-50)"
        raise CheckpointError(
            f"{path} is not a detectron2 R50-FPN Mask R-CNN{hint}: "
            f"{len(unexpected)} unexpected tensors {unexpected[:5]}, {len(missing)} missing {missing[:5]}"
        )
    cells = sorted(
        (k for k in state if k.startswith("proposal_generator.anchor_generator.cell_anchors.")),
        key=lambda k: int(k.rsplit(".", 1)[1]),
    )
    config_mean = config_std = None
    if config is None:
        overrides = dict(anchor_sizes=parse_anchor_sizes(anchor_sizes), detections_per_image=detections)
    else:
        overrides, config_mean, config_std = config_overrides(config)
    try:
        model = build_maskrcnn(ARCH, **overrides).eval()
    except ValueError as error:
        raise CheckpointError(f"{config or path}: {error}") from error
    ours = model.state_dict()
    converted = {}
    for d2_name, value in state.items():
        if d2_name not in mapping:
            continue
        name, value = mapping[d2_name], convert(d2_name, value).float()
        if value.shape != ours[name].shape:
            hint = (
                " (anchors per location: check ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS, or --config)"
                if name.startswith("rpn.head")
                else ""
            )
            raise CheckpointError(
                f"{d2_name} has shape {tuple(value.shape)}, a 1-class R50-FPN Mask R-CNN has "
                f"{tuple(ours[name].shape)} (as {name}){hint}"
            )
        converted[name] = value
    mean = pixel_mean or _stored(state, "pixel_mean") or config_mean or [CREME_PIXEL_MEAN] * 3
    std = pixel_std or _stored(state, "pixel_std") or config_std or [CREME_PIXEL_STD] * 3
    converted["pixel_mean"] = _bgr(mean).view(1, 3, 1, 1)
    converted["pixel_std"] = _bgr(std).view(1, 3, 1, 1)
    model.load_state_dict(converted, strict=True)
    extras: dict = dict(spec_overrides=overrides)
    if cells:
        cell_anchors = [state[k].float() for k in cells]
        anchors_per_location = model.rpn.head.cls_logits.out_channels
        if len(cell_anchors) != len(model.rpn_levels) or any(
            len(c) != anchors_per_location for c in cell_anchors
        ):
            raise CheckpointError(
                f"stored cell anchors {[tuple(c.shape) for c in cell_anchors]} do not fit the RPN"
            )
        model.rpn.anchor_generator.cell_anchors = cell_anchors
        extras["cell_anchors"] = cell_anchors
    return model, extras


def _stored(state: dict[str, torch.Tensor], key: str) -> list[float] | None:
    return state[key].flatten().tolist() if key in state else None


def _bgr(values: list[float]) -> torch.Tensor:
    v = torch.tensor([float(x) for x in values])
    if v.numel() == 1:
        v = v.repeat(3)
    if v.numel() != 3:
        raise CheckpointError(f"pixel mean / std need 1 or 3 values (B, G, R), got {values}")
    return v


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="detectron2 model_final.pth ({'model': state_dict})")
    p.add_argument("--out", type=Path, required=True, help="folder for model.pt (and model.onnx)")
    p.add_argument(
        "--config",
        type=Path,
        help="detectron2 config YAML saved beside model_final.pth (anchors, RPN levels and top-k, "
        "test resize, thresholds); without it detectron2's R50-FPN defaults at native tile size",
    )
    p.add_argument(
        "--anchor-sizes",
        default=DEFAULT_ANCHOR_SIZES,
        help="without --config: ANCHOR_GENERATOR.SIZES per P2-P6, e.g. 32;64;...",
    )
    p.add_argument("--pixel-mean", type=float, nargs="+", help="MODEL.PIXEL_MEAN (B G R, 8-bit scale)")
    p.add_argument("--pixel-std", type=float, nargs="+", help="MODEL.PIXEL_STD (B G R, 8-bit scale)")
    p.add_argument("--detections", type=int, default=512, help="without --config: TEST.DETECTIONS_PER_IMAGE")
    p.add_argument("--onnx", action="store_true", help="also export model.onnx")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    model, extras = import_checkpoint(
        args.checkpoint, args.anchor_sizes, args.pixel_mean, args.pixel_std, args.detections, args.config
    )
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(
        dict(arch=ARCH, model=model.state_dict(), source=str(args.checkpoint), **extras),
        args.out / "model.pt",
    )
    print(f"imported {args.checkpoint} -> {args.out / 'model.pt'}")
    if args.onnx:
        path = export_onnx(model, args.out / "model.onnx")
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
