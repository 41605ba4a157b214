"""Mask R-CNN for loop instances (torchvision parts, detectron2 semantics), one class.

One module hosts both our own trained models (ResNet-18-FPN, ``maskrcnn_r18``) and imported
detectron2 checkpoints (ResNet-50-FPN, ``maskrcnn_r50``, see ``loopstream.models.detectron2_import``),
so both follow detectron2's inference rules:

- Input ``[N, 1, H, W]`` float32, H and W multiples of 32 (serving tiles are 512 px). No resize and
  no padding inside the model (torchvision's transform would rescale every input to a short side
  of 800 px). The grey channel is normalised by the ``pixel_mean`` / ``pixel_std`` buffers
  (3 values, BGR order) and thereby replicated to 3 channels: our models keep 0 / 1 and get the
  per-frame standardised tile (``loopstream.core.imaging.standardise``); an imported detectron2
  model gets 8-bit grey counts and its config's PIXEL_MEAN / PIXEL_STD.
- Anchors: detectron2's cell anchors (no rounding of the anchor corners, unlike torchvision),
  offset 0.0, fixed strides 4-64 px, one set of sizes per FPN level, aspect ratios 0.5, 1, 2.
- RoI pooling: ROIAlignV2 (``aligned=True``, ``sampling_ratio=0``), level of a box
  ``floor(4 + log2(sqrt(area) / 224 + 1e-8))`` clamped to the pooled levels, fixed strides.
- Outputs in eval mode, per image: ``boxes`` [K, 4] (x0, y0, x1, y1 in input px), ``scores`` [K],
  ``masks`` [K, 1, 28, 28] loop probabilities of the mask head. Pasting into the image and the
  0.5 threshold happen in serving (``loopstream.serving.instance_merge.paste_mask``, detectron2's
  rule), so full-size masks never leave the model.

``maskrcnn_r18`` is small on purpose (CPU serving, <= 25 MB file): ResNet-18 stages C2-C4 only
(loops are 10-70 px, a stride-16 receptive field already holds a whole loop; C5 alone would hold
75 % of the weights), 128-channel FPN P2-P5 (P5 = max-pool of P4), a 256-wide box head.

Examples
--------
>>> import torch
>>> model = build_maskrcnn("maskrcnn_r18", detections_per_image=4).eval()
>>> with torch.no_grad():
...     out = model(torch.zeros(1, 1, 64, 96))[0]
>>> sorted(out), tuple(out["masks"].shape[1:])
(['boxes', 'labels', 'masks', 'scores'], (1, 28, 28))
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import FrozenBatchNorm2d, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

SIZE_MULTIPLE_PX = 32
N_CLASSES = 2  # background + loop (torchvision's order: background first)


@dataclass(frozen=True)
class MaskRCNNSpec:
    """Shape and inference settings of one Mask R-CNN variant; lengths in px."""

    depth: int  # ResNet depth: 18 or 50
    stages: tuple[int, ...]  # ResNet stages feeding the FPN (1 = C2 ... 4 = C5)
    fpn_channels: int
    box_head_width: int  # fc6 / fc7 (detectron2: fc1 / fc2)
    mask_head_channels: int
    anchor_sizes: tuple[tuple[float, ...], ...]  # one tuple per FPN level, P2 first
    frozen_bn: bool  # detectron2 freezes every BatchNorm; ours train theirs from scratch
    stride_in_1x1: bool  # detectron2's MSRA ResNet: stride in the bottleneck's 1x1 conv
    roi_batch_per_image: int = 512  # RoIs sampled per training image for the box / mask heads
    detections_per_image: int = 512
    score_threshold: float = 0.05
    box_nms_iou: float = 0.5
    rpn_nms_iou: float = 0.7
    rpn_pre_nms_per_level: int = 1000
    rpn_post_nms: int = 1000
    # detectron2's ANCHOR_GENERATOR.ASPECT_RATIOS (h / w): one tuple for every RPN level, or one each
    aspect_ratios: tuple[tuple[float, ...], ...] = ((0.5, 1.0, 2.0),)
    # FPN levels the RPN reads, in order (RPN.IN_FEATURES: creme reads p2 twice, with two anchor
    # sizes at stride 4); () = every level of the backbone once, P2 first
    rpn_levels: tuple[int, ...] = ()
    # test-time resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST): short side to this many px, the
    # long side at most test_max_side; 0 = none (our own models see native tiles)
    test_short_side: int = 0
    test_max_side: int = 0


ARCHITECTURES: dict[str, MaskRCNNSpec] = {
    "maskrcnn_r18": MaskRCNNSpec(
        depth=18,
        stages=(1, 2, 3),
        fpn_channels=128,
        box_head_width=256,
        mask_head_channels=128,
        anchor_sizes=((8, 12), (16, 24), (32, 48), (64, 128)),
        frozen_bn=False,
        stride_in_1x1=False,
        roi_batch_per_image=128,  # the mask head on 512 RoIs dominated CPU training time
    ),
    # detectron2's COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x layout; anchors 32-512 px are
    # its defaults, the import CLI overrides them with the checkpoint's config (--anchor-sizes).
    "maskrcnn_r50": MaskRCNNSpec(
        depth=50,
        stages=(1, 2, 3, 4),
        fpn_channels=256,
        box_head_width=1024,
        mask_head_channels=256,
        anchor_sizes=((32,), (64,), (128,), (256,), (512,)),
        frozen_bn=True,
        stride_in_1x1=True,
        detections_per_image=100,
    ),
}


class Detectron2Anchors(AnchorGenerator):
    """torchvision's anchor grid (offset 0.0, location-major) with detectron2's cell anchors and
    strides: for each size, for each aspect ratio h/w: w = sqrt(size^2 / ratio), h = ratio * w,
    corners at +-w/2, +-h/2, not rounded; each feature map has the fixed stride of its FPN level
    (``strides``, default 4 * 2^i for the i-th map; torchvision would infer H // feature height,
    which differs on P6 when H is not a multiple of 64). A level may appear twice (creme's p2)."""

    def __init__(self, sizes, aspect_ratios, strides: tuple[int, ...] = ()) -> None:
        super().__init__(sizes, aspect_ratios)
        self.strides = tuple(strides) or tuple(4 * 2**i for i in range(len(sizes)))

    def generate_anchors(
        self,
        scales: list[int],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),  # noqa: B008 (same signature as the parent)
    ) -> Tensor:
        cells = []
        for size in scales:
            for ratio in aspect_ratios:
                w = math.sqrt(size * size / ratio)
                h = ratio * w
                cells.append([-w / 2, -h / 2, w / 2, h / 2])
        return torch.tensor(cells, dtype=dtype, device=device)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        grid_sizes = [f.shape[-2:] for f in feature_maps]
        device = feature_maps[0].device
        strides = [[torch.tensor(stride, dtype=torch.int64, device=device)] * 2 for stride in self.strides]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]


class AlignedRoIPooler(nn.Module):
    """detectron2's ROIPooler with ROIAlignV2 over FPN levels with fixed strides 4, 8, 16, ...

    ``aligned=True`` samples at pixel centres (the half-pixel shift detectron2 calls ROIAlignV2);
    ``sampling_ratio=0`` takes ceil(bin size) samples per bin.
    """

    def __init__(self, featmap_names: list[str], output_size: int, first_level: int = 2) -> None:
        super().__init__()
        self.featmap_names = featmap_names
        self.output_size = (output_size, output_size)
        self.min_level, self.max_level = first_level, first_level + len(featmap_names) - 1
        self.scales = [2.0 ** -(first_level + i) for i in range(len(featmap_names))]

    def levels(self, boxes: Tensor) -> Tensor:
        """Pyramid level index (0 = first pooled level) of each box, detectron2's Eq. (1) of FPN."""
        sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        level = torch.floor(4 + torch.log2(sizes / 224 + 1e-8))
        return (torch.clamp(level, min=self.min_level, max=self.max_level) - self.min_level).to(torch.int64)

    def forward(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        x = [features[name] for name in self.featmap_names]
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0
        )
        levels = self.levels(rois[:, 1:])
        pooled, order = [], []
        for level, (feature, scale) in enumerate(zip(x, self.scales, strict=True)):
            index = torch.where(levels == level)[0]
            pooled.append(
                roi_align(feature, rois[index], self.output_size, scale, sampling_ratio=0, aligned=True)
            )
            order.append(index)
        # Rows come out grouped by level; one gather puts them back in the RoIs' order. (torchvision
        # scatters every level into a zero tensor instead: in ONNX Runtime that ScatterElements
        # over RoIs x channels x bins took 14 % of a tile's time.)
        return torch.cat(pooled)[torch.argsort(torch.cat(order))]


class LoopMaskRCNN(nn.Module):
    """Backbone + FPN, RPN and box / mask heads, called without torchvision's resizing transform."""

    pixel_mean: Tensor  # buffers, declared for type checkers
    pixel_std: Tensor

    def __init__(self, spec: MaskRCNNSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("pixel_mean", torch.zeros(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.ones(1, 3, 1, 1))
        self.backbone = _backbone(spec)
        # FPN level -> backbone output: P2.. from the stages, one more by max pooling ("pool")
        self.level_keys = {2 + i: str(i) for i in range(len(spec.stages))} | {2 + len(spec.stages): "pool"}
        self.rpn_levels = spec.rpn_levels or tuple(self.level_keys)
        if unknown := [level for level in self.rpn_levels if level not in self.level_keys]:
            raise ValueError(
                f"RPN levels {unknown} are not FPN levels of this backbone ({list(self.level_keys)})"
            )
        # (RPN input name, backbone output) in order: plain strings, so TorchScript can script it
        self.rpn_inputs = [(f"p{lvl}_{i}", self.level_keys[lvl]) for i, lvl in enumerate(self.rpn_levels)]
        self.test_short_side, self.test_max_side = spec.test_short_side, spec.test_max_side
        n = len(self.rpn_levels)
        if len(spec.anchor_sizes) != n:
            raise ValueError(f"{n} RPN input levels need {n} anchor size tuples, got {spec.anchor_sizes}")
        ratios = spec.aspect_ratios * n if len(spec.aspect_ratios) == 1 else spec.aspect_ratios
        if len(ratios) != n:
            raise ValueError(
                f"{n} RPN input levels need 1 or {n} aspect-ratio tuples, got {spec.aspect_ratios}"
            )
        anchors = Detectron2Anchors(spec.anchor_sizes, ratios, tuple(2**level for level in self.rpn_levels))
        per_location = set(anchors.num_anchors_per_location())
        if len(per_location) != 1:
            raise ValueError(
                f"every RPN level needs the same number of anchors (sizes x ratios), got {per_location}"
            )
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(spec.fpn_channels, per_location.pop()),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_top_n=dict(training=2000, testing=spec.rpn_pre_nms_per_level),
            post_nms_top_n=dict(training=1000, testing=spec.rpn_post_nms),
            nms_thresh=spec.rpn_nms_iou,
        )
        pooled = [str(i) for i in range(min(len(spec.stages), 4))]  # P2-P5 at most, like detectron2
        c, width = spec.fpn_channels, spec.box_head_width
        self.roi_heads = RoIHeads(
            box_roi_pool=AlignedRoIPooler(pooled, 7),
            box_head=TwoMLPHead(c * 7 * 7, width),
            box_predictor=FastRCNNPredictor(width, N_CLASSES),
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=spec.roi_batch_per_image,
            positive_fraction=0.25,
            bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
            score_thresh=spec.score_threshold,
            nms_thresh=spec.box_nms_iou,
            detections_per_img=spec.detections_per_image,
            mask_roi_pool=AlignedRoIPooler(pooled, 14),
            mask_head=MaskRCNNHeads(c, [spec.mask_head_channels] * 4, 1),
            mask_predictor=MaskRCNNPredictor(spec.mask_head_channels, spec.mask_head_channels, N_CLASSES),
        )

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training (with ``targets``): the loss dict; eval: one detection dict per image (boxes in
        input px, also when the model resizes its input for the test)."""
        x = (images - self.pixel_mean) / self.pixel_std  # [N, 1, H, W] -> [N, 3, H, W]
        height, width = images.shape[-2], images.shape[-1]
        resized = not self.training and self.test_short_side > 0
        if resized:
            x = self._test_resize(x)
        size = x.shape[-2:]
        image_list = ImageList(_pad_to_multiple(x), [(size[0], size[1])] * x.shape[0])
        features = self.backbone(image_list.tensors)
        rpn_inputs: dict[str, Tensor] = OrderedDict()
        for name, key in self.rpn_inputs:
            rpn_inputs[name] = features[key]
        proposals, rpn_losses = self.rpn(image_list, rpn_inputs, targets)
        detections, roi_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        if resized:  # detectron2's detector_postprocess: boxes back to the input's px, per axis
            scale = torch.tensor([width / size[1], height / size[0]] * 2, dtype=x.dtype, device=x.device)
            for d in detections:
                d["boxes"] = d["boxes"] * scale
        return detections

    def _test_resize(self, x: Tensor) -> Tensor:
        """detectron2's ResizeShortestEdge at test time (bilinear; on the normalised image, the
        same as before normalising since both are linear): short side to ``test_short_side``,
        the long side at most ``test_max_side``. The output side is floor(side * scale), where
        detectron2 rounds: the same whenever the product is an integer (512 -> 800 px)."""
        short, longest = min(x.shape[-2], x.shape[-1]), max(x.shape[-2], x.shape[-1])
        scale = self.test_short_side / short
        if self.test_max_side > 0 and longest * scale > self.test_max_side:
            scale = self.test_max_side / longest
        return nn.functional.interpolate(
            x, scale_factor=float(scale), mode="bilinear", align_corners=False, recompute_scale_factor=True
        )


class SingleImageExport(nn.Module):
    """Flat-tensor face of a model for ONNX / Triton: ``image`` [1, 1, H, W] ->
    ``boxes`` [K, 4], ``scores`` [K], ``mask_probs`` [K, 28, 28]."""

    def __init__(self, model: LoopMaskRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        detections = self.model(image)[0]
        return detections["boxes"], detections["scores"], detections["masks"][:, 0]


def _pad_to_multiple(x: Tensor) -> Tensor:
    """Zero padding (after normalisation, as detectron2 pads) to multiples of the FPN's stride 32."""
    pad_h, pad_w = -x.shape[-2] % SIZE_MULTIPLE_PX, -x.shape[-1] % SIZE_MULTIPLE_PX
    return nn.functional.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def _backbone(spec: MaskRCNNSpec) -> BackboneWithFPN:
    norm = FrozenBatchNorm2d if spec.frozen_bn else nn.BatchNorm2d
    body = getattr(resnet, f"resnet{spec.depth}")(weights=None, norm_layer=norm)
    if spec.stride_in_1x1:
        for layer in (body.layer2, body.layer3, body.layer4):
            layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    width = 64 if spec.depth < 50 else 256  # channels of C2
    return BackboneWithFPN(
        body,
        return_layers=OrderedDict((f"layer{s}", str(i)) for i, s in enumerate(spec.stages)),
        in_channels_list=[width * 2 ** (s - 1) for s in spec.stages],
        out_channels=spec.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def build_maskrcnn(name: str, **overrides) -> LoopMaskRCNN:
    """A randomly initialised model of architecture ``name``; ``overrides`` replace spec fields."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    spec = ARCHITECTURES[name]
    return LoopMaskRCNN(MaskRCNNSpec(**{**spec.__dict__, **overrides}))
