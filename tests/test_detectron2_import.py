"""detectron2 checkpoint import: names, shapes, class layout and the detectron2-specific parts.

The checkpoint is synthesised with random values under detectron2's own names and shapes for a
1-class R50-FPN Mask R-CNN (written out here independently of the importer's mapping).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from loopstream.models.detectron2_import import CheckpointError, import_checkpoint, main
from loopstream.models.maskrcnn import AlignedRoIPooler, Detectron2Anchors
from loopstream.serving.instance_merge import paste_mask

torch.set_num_threads(2)


def detectron2_r50_fpn_state(
    res4_blocks: int = 6, classes: int = 1, values: bool = True
) -> dict[str, torch.Tensor]:
    """A detectron2 ``GeneralizedRCNN`` R50-FPN Mask R-CNN state dict, random values (or, with
    ``values=False``, zeros stored as one broadcast element each: names and shapes only)."""
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}
    if not values:
        state = ShapesOnly()

    def conv(name: str, out_c: int, in_c: int, k: int, norm: bool, bias: bool = False) -> None:
        state[f"{name}.weight"] = torch.randn(out_c, in_c, k, k, generator=g) * 0.01
        if bias:
            state[f"{name}.bias"] = torch.randn(out_c, generator=g) * 0.01
        if norm:
            state[f"{name}.norm.weight"] = torch.rand(out_c, generator=g) + 0.5
            state[f"{name}.norm.bias"] = torch.randn(out_c, generator=g) * 0.1
            state[f"{name}.norm.running_mean"] = torch.randn(out_c, generator=g) * 0.1
            state[f"{name}.norm.running_var"] = torch.rand(out_c, generator=g) + 0.5

    conv("backbone.bottom_up.stem.conv1", 64, 3, 7, True)
    in_c = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, res4_blocks, 3), (64, 128, 256, 512), strict=True)):
        for b in range(blocks):
            name = f"backbone.bottom_up.res{stage + 2}.{b}"
            if b == 0:
                conv(f"{name}.shortcut", width * 4, in_c, 1, True)
            conv(f"{name}.conv1", width, in_c if b == 0 else width * 4, 1, True)
            conv(f"{name}.conv2", width, width, 3, True)
            conv(f"{name}.conv3", width * 4, width, 1, True)
        in_c = width * 4
    for level, c in zip((2, 3, 4, 5), (256, 512, 1024, 2048), strict=True):
        conv(f"backbone.fpn_lateral{level}", 256, c, 1, False, bias=True)
        conv(f"backbone.fpn_output{level}", 256, 256, 3, False, bias=True)
    conv("proposal_generator.rpn_head.conv", 256, 256, 3, False, bias=True)
    conv("proposal_generator.rpn_head.objectness_logits", 3, 256, 1, False, bias=True)
    conv("proposal_generator.rpn_head.anchor_deltas", 12, 256, 1, False, bias=True)
    for name, shape in {
        "roi_heads.box_head.fc1": (1024, 256 * 7 * 7),
        "roi_heads.box_head.fc2": (1024, 1024),
        "roi_heads.box_predictor.cls_score": (classes + 1, 1024),
        "roi_heads.box_predictor.bbox_pred": (4 * classes, 1024),
    }.items():
        state[f"{name}.weight"] = torch.randn(*shape, generator=g) * 0.01
        state[f"{name}.bias"] = torch.randn(shape[0], generator=g) * 0.01
    for i in (1, 2, 3, 4):
        conv(f"roi_heads.mask_head.mask_fcn{i}", 256, 256, 3, False, bias=True)
    state["roi_heads.mask_head.deconv.weight"] = torch.randn(256, 256, 2, 2, generator=g) * 0.01
    state["roi_heads.mask_head.deconv.bias"] = torch.zeros(256)
    conv("roi_heads.mask_head.predictor", classes, 256, 1, False, bias=True)
    return dict(state)


class ShapesOnly(dict):
    """Stores every tensor as a zero broadcast to its shape: a few bytes on disk."""

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        super().__setitem__(key, torch.zeros(()).expand(value.shape))


@pytest.fixture(scope="module")
def d2_state() -> dict[str, torch.Tensor]:
    return detectron2_r50_fpn_state()


@pytest.fixture(scope="module")
def imported(tmp_path_factory, d2_state):
    path = tmp_path_factory.mktemp("d2") / "model_final.pth"
    torch.save({"model": d2_state, "iteration": 1000}, path)
    model, _ = import_checkpoint(path)
    return path, model


def test_every_tensor_is_used_and_copied(imported, d2_state):
    _, model = imported  # strict load inside: no missing or unexpected tensor
    ours = model.state_dict()
    assert torch.equal(
        ours["backbone.body.layer3.5.conv2.weight"], d2_state["backbone.bottom_up.res4.5.conv2.weight"]
    )
    assert torch.equal(
        ours["backbone.body.layer2.0.downsample.1.running_var"],
        d2_state["backbone.bottom_up.res3.0.shortcut.norm.running_var"],
    )
    assert torch.equal(ours["backbone.fpn.inner_blocks.0.0.weight"], d2_state["backbone.fpn_lateral2.weight"])
    assert torch.equal(
        ours["roi_heads.mask_head.3.0.weight"], d2_state["roi_heads.mask_head.mask_fcn4.weight"]
    )
    assert ours["pixel_mean"].flatten().tolist() == pytest.approx([149.6] * 3)
    assert ours["pixel_std"].flatten().tolist() == pytest.approx([35.6] * 3)


def test_stride_in_1x1_and_frozen_bn(imported):
    body = imported[1].backbone.body
    for layer in (body.layer2, body.layer3, body.layer4):
        assert layer[0].conv1.stride == (2, 2) and layer[0].conv2.stride == (1, 1)
    norms = [m for m in body.modules() if "BatchNorm" in type(m).__name__]
    assert norms and all(type(m).__name__ == "FrozenBatchNorm2d" for m in norms)


def test_class_layout_background_last_becomes_first(imported, d2_state):
    predictor = imported[1].roi_heads.box_predictor
    x = torch.randn(5, 1024)
    d2_logits = F.linear(
        x,
        d2_state["roi_heads.box_predictor.cls_score.weight"],
        d2_state["roi_heads.box_predictor.cls_score.bias"],
    )
    d2_deltas = F.linear(
        x,
        d2_state["roi_heads.box_predictor.bbox_pred.weight"],
        d2_state["roi_heads.box_predictor.bbox_pred.bias"],
    )
    with torch.no_grad():
        logits, deltas = predictor(x)
    torch.testing.assert_close(logits[:, 1], d2_logits[:, 0])  # loop
    torch.testing.assert_close(logits[:, 0], d2_logits[:, 1])  # background
    torch.testing.assert_close(deltas[:, 4:], d2_deltas)
    torch.testing.assert_close(F.softmax(logits, 1)[:, 1], F.softmax(d2_logits, 1)[:, 0])


def test_imported_model_runs_on_8bit_grey(imported):
    model = imported[1]
    model.roi_heads.detections_per_img = 8  # random weights: keep the mask head's work small
    with torch.no_grad():
        out = model(torch.full((1, 1, 64, 96), 149.6))[0]
    model.roi_heads.detections_per_img = 512
    assert out["masks"].shape[1:] == (1, 28, 28) and out["boxes"].shape[1] == 4


def test_detectron2_cell_anchors_offset_zero_fixed_strides():
    from torchvision.models.detection.image_list import ImageList

    gen = Detectron2Anchors(((32,), (64,)), ((0.5, 1.0, 2.0),) * 2)
    w = math.sqrt(32 * 32 / 0.5)
    torch.testing.assert_close(
        gen.cell_anchors[0][0], torch.tensor([-w / 2, -w / 4, w / 2, w / 4])
    )  # not rounded
    # 96 px input: the second level (stride 8) has 12 x 12 cells; a coarse 2 x 2 map keeps stride 8
    features = [torch.zeros(1, 1, 24, 24), torch.zeros(1, 1, 2, 2)]
    anchors = gen(ImageList(torch.zeros(1, 3, 96, 96), [(96, 96)]), features)[0]
    centres = (anchors[24 * 24 * 3 :, :2] + anchors[24 * 24 * 3 :, 2:]) / 2
    assert sorted({float(c) for c in centres[:, 0]}) == [0.0, 8.0]  # offset 0.0, stride 4 * 2^1


def test_roialign_v2_levels_and_alignment():
    pooler = AlignedRoIPooler(["0", "1", "2", "3"], 7)
    boxes = torch.tensor(
        [[0, 0, 224, 224], [0, 0, 111, 111], [0, 0, 10, 10], [0, 0, 900, 900]], dtype=torch.float32
    )
    assert pooler.levels(boxes).tolist() == [2, 0, 0, 3]  # P4, P2 (log2(111/224) = -1.01), P2, P5
    feature = torch.arange(64.0).reshape(1, 1, 8, 8)
    features = {
        "0": feature,
        "1": feature[:, :, :4, :4],
        "2": feature[:, :, :2, :2],
        "3": feature[:, :, :1, :1],
    }
    # On a linear feature the mean of the symmetric bins is the value at the box centre: image
    # px 6 is feature px 6 / 4 - 0.5 = 1.0 with aligned=True (value 8 * 1 + 1 = 9); 13.5 without.
    out = pooler(features, [torch.tensor([[4.0, 4.0, 8.0, 8.0]])], [(32, 32)])
    assert float(out.mean()) == pytest.approx(9.0, abs=1e-5)


def test_paste_mask_is_detectron2s_grid_sample():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 1, (28, 28)).astype(np.float32)
    box = np.array([5.3, 7.8, 40.6, 30.2])
    y0, x0, mask = paste_mask(probs, box, (48, 64))
    # detectron2's _do_paste_mask, written out: grid of pixel centres in [-1, 1] box coordinates.
    ys = (torch.arange(y0, y0 + mask.shape[0]) + 0.5 - box[1]) / (box[3] - box[1]) * 2 - 1
    xs = (torch.arange(x0, x0 + mask.shape[1]) + 0.5 - box[0]) / (box[2] - box[0]) * 2 - 1
    grid = torch.stack([xs[None, :].expand(len(ys), -1), ys[:, None].expand(-1, len(xs))], dim=2)
    ref = F.grid_sample(torch.from_numpy(probs)[None, None], grid[None].float(), align_corners=False)[0, 0]
    assert (y0, x0, mask.shape) == (6, 4, (26, 38))  # floor - 1 .. ceil + 1
    assert np.array_equal(mask, (ref >= 0.5).numpy())


def test_wrong_architectures_fail_clearly(tmp_path, imported):
    r101 = tmp_path / "r101.pth"
    torch.save({"model": detectron2_r50_fpn_state(res4_blocks=23, values=False)}, r101)
    with pytest.raises(CheckpointError, match="ResNet-101"):
        import_checkpoint(r101)
    two = tmp_path / "two.pth"
    torch.save({"model": detectron2_r50_fpn_state(classes=2, values=False)}, two)
    with pytest.raises(CheckpointError, match="2 classes"):
        import_checkpoint(two)
    with pytest.raises(CheckpointError, match="anchors per location"):
        import_checkpoint(imported[0], anchor_sizes="8,16")
    not_a_model = tmp_path / "other.pth"
    torch.save({"model": {"backbone.stem.weight": torch.zeros(1)}}, not_a_model)
    with pytest.raises(CheckpointError, match="not a detectron2 R50-FPN"):
        import_checkpoint(not_a_model)


def test_cli_writes_a_loadable_model(imported, tmp_path):
    from loopstream.models.export_instance import load_instance_checkpoint

    main([str(imported[0]), "--out", str(tmp_path), "--pixel-mean", "150"])
    model = load_instance_checkpoint(tmp_path / "model.pt")
    assert model.pixel_mean.flatten().tolist() == [150.0] * 3
    for a, b in zip(model.state_dict().values(), imported[1].state_dict().values(), strict=True):
        assert a.shape == b.shape


CREME_CONFIG = """\
MODEL:
  META_ARCHITECTURE: GeneralizedRCNN
  MASK_ON: true
  PIXEL_MEAN: [149.6, 149.6, 149.6]
  PIXEL_STD: [35.6, 35.6, 35.6]
  ANCHOR_GENERATOR:
    SIZES: [[8], [16], [32], [64], [128], [256]]
    ASPECT_RATIOS: [[0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0]]
    OFFSET: 0.0
  RESNETS:
    DEPTH: 50
    STRIDE_IN_1X1: true
  RPN:
    IN_FEATURES: [p2, p2, p3, p4, p5, p6]
    PRE_NMS_TOPK_TEST: 4000
    POST_NMS_TOPK_TEST: 2000
    NMS_THRESH: 0.7
  ROI_HEADS:
    NUM_CLASSES: 1
    IN_FEATURES: [p2, p3, p4, p5]
    SCORE_THRESH_TEST: 0.05
    NMS_THRESH_TEST: 0.5
INPUT:
  MIN_SIZE_TEST: 800
  MAX_SIZE_TEST: 1333
TEST:
  DETECTIONS_PER_IMAGE: 6
"""


def creme_r50_fpn_state() -> dict[str, torch.Tensor]:
    """creme's layout: one anchor size per RPN input, 7 aspect ratios, so the RPN head predicts
    7 objectness logits and 28 deltas per location (detectron2's default has 3 and 12)."""
    state = detectron2_r50_fpn_state()
    g = torch.Generator().manual_seed(1)
    for name, out_c in (("objectness_logits", 7), ("anchor_deltas", 28)):
        state[f"proposal_generator.rpn_head.{name}.weight"] = (
            torch.randn(out_c, 256, 1, 1, generator=g) * 0.01
        )
        state[f"proposal_generator.rpn_head.{name}.bias"] = torch.randn(out_c, generator=g) * 0.01
    return state


@pytest.fixture(scope="module")
def creme_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("creme")
    torch.save({"model": creme_r50_fpn_state(), "iteration": 1}, folder / "model_final.pth")
    (folder / "config.yaml").write_text(CREME_CONFIG)
    return folder


def test_cremes_own_configuration_imports_as_creme_runs_it(creme_checkpoint):
    path, config = creme_checkpoint / "model_final.pth", creme_checkpoint / "config.yaml"
    with pytest.raises(CheckpointError, match="anchors per location"):
        import_checkpoint(path)  # detectron2's default anchors: 3 per location, not creme's 7
    model, extras = import_checkpoint(path, config=config)
    assert model.rpn_levels == (2, 2, 3, 4, 5, 6)
    generator = model.rpn.anchor_generator
    assert generator.strides == (4, 4, 8, 16, 32, 64), "p2 twice, both at stride 4"
    assert generator.num_anchors_per_location() == [7] * 6
    widths = [float(c[3, 2] - c[3, 0]) for c in generator.cell_anchors]  # ratio 1.0
    assert widths == pytest.approx([8, 16, 32, 64, 128, 256])
    tall = generator.cell_anchors[0][6]  # ratio 10: h = 10 w, area 8^2
    assert float((tall[3] - tall[1]) / (tall[2] - tall[0])) == pytest.approx(10.0)
    assert model.rpn._pre_nms_top_n["testing"] == 4000 and model.rpn._post_nms_top_n["testing"] == 2000
    assert model.roi_heads.detections_per_img == 6 and extras["spec_overrides"]["test_short_side"] == 800


def test_the_test_time_resize_runs_the_network_at_800_px_and_maps_boxes_back(creme_checkpoint):
    model, _ = import_checkpoint(
        creme_checkpoint / "model_final.pth", config=creme_checkpoint / "config.yaml"
    )
    seen: list[tuple[int, ...]] = []
    hook = model.backbone.register_forward_hook(lambda _m, inputs, _o: seen.append(tuple(inputs[0].shape)))
    with torch.no_grad():
        out = model(torch.rand(1, 1, 512, 512) * 255)[0]
    hook.remove()
    assert seen == [(1, 3, 800, 800)], "detectron2's MIN_SIZE_TEST: 512 px tiles run at 800 px"
    assert len(out["boxes"]) > 0 and float(out["boxes"].max()) <= 512.0 + 1e-3, "boxes in the tile's px"


def test_configs_the_import_cannot_reproduce_fail_clearly(creme_checkpoint, tmp_path):
    path = creme_checkpoint / "model_final.pth"
    (tmp_path / "offset.yaml").write_text(CREME_CONFIG.replace("OFFSET: 0.0", "OFFSET: 0.5"))
    with pytest.raises(CheckpointError, match=r"OFFSET is 0\.5"):
        import_checkpoint(path, config=tmp_path / "offset.yaml")
    (tmp_path / "base.yaml").write_text("_BASE_: ../Base-RCNN-FPN.yaml\n")
    with pytest.raises(CheckpointError, match="full config"):
        import_checkpoint(path, config=tmp_path / "base.yaml")


def test_cli_with_the_config_writes_a_model_that_rebuilds_the_same(creme_checkpoint, tmp_path):
    from loopstream.models.export_instance import load_instance_checkpoint

    folder = creme_checkpoint
    main([str(folder / "model_final.pth"), "--config", str(folder / "config.yaml"), "--out", str(tmp_path)])
    model = load_instance_checkpoint(tmp_path / "model.pt")
    assert model.rpn_levels == (2, 2, 3, 4, 5, 6) and model.test_short_side == 800
    assert model.rpn.anchor_generator.num_anchors_per_location() == [7] * 6
