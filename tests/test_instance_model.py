"""Instance model: architecture contract, ONNX export parity, training targets, training trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loopstream.models.datasets import simulated_sample
from loopstream.models.export_instance import export_onnx, onnx_tile_fn, torch_tile_fn
from loopstream.models.maskrcnn import build_maskrcnn
from loopstream.models.train_instance import instance_target, main, training_pair

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_maskrcnn("maskrcnn_r18", detections_per_image=16).eval()


def test_no_hidden_resize_and_small_anchors(small_model):
    with torch.no_grad():
        boxes = small_model(torch.randn(1, 1, 96, 160))[0]["boxes"]
    assert boxes[:, 2].max() <= 160 and boxes[:, 3].max() <= 96  # boxes in input px
    cells = small_model.rpn.anchor_generator.cell_anchors
    assert float(cells[0][:, 2].min() * 2) < 8  # 8 px anchors on P2 (ratio 2: narrower)
    assert small_model.spec.detections_per_image == 16
    assert build_maskrcnn("maskrcnn_r18").spec.detections_per_image == 512


@pytest.mark.parametrize("fp16", [False, True])
def test_onnx_matches_eager_at_any_tile_size(small_model, tmp_path, fp16):
    path = export_onnx(small_model, tmp_path / "m.onnx", example_px=128, fp16=fp16)
    run_onnx, run_torch = onnx_tile_fn(path), torch_tile_fn(small_model)
    if fp16:  # the eager reference gets the same rounded weights
        rounded = build_maskrcnn("maskrcnn_r18", detections_per_image=16).eval()
        rounded.load_state_dict(
            {
                k: v.half().float() if v.is_floating_point() and v.numel() >= 1024 else v
                for k, v in small_model.state_dict().items()
            }
        )
        run_torch = torch_tile_fn(rounded)
    for h, w in [(96, 192)] if fp16 else [(128, 128), (96, 192)]:
        x = np.random.default_rng(h).standard_normal((1, 1, h, w)).astype(np.float32)
        ours, ref = run_onnx(x), run_torch(x)
        assert [a.shape for a in ours] == [a.shape for a in ref]
        for a, b in zip(ours, ref, strict=True):
            np.testing.assert_allclose(a, b, atol=2e-3, rtol=1e-3)


def test_instance_target_boxes_cover_the_pixels():
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[0, 4:10, 5:8] = 1
    masks[1, 0, 0] = 1  # a remnant of a cropped loop: dropped
    target = instance_target(masks)
    assert target["boxes"].tolist() == [[5.0, 4.0, 8.0, 10.0]]
    assert target["labels"].tolist() == [1] and tuple(target["masks"].shape) == (1, 32, 32)
    assert tuple(instance_target(np.zeros((0, 32, 32), np.uint8))["boxes"].shape) == (0, 4)


def test_a_few_steps_lower_the_loss_on_one_batch():
    rng = np.random.default_rng(2)
    image, target = training_pair(simulated_sample(1_000_001, rng, (256, 256)), 128, (1.0, 1.0), rng)
    assert len(target["boxes"]) > 0
    torch.manual_seed(0)
    model = build_maskrcnn("maskrcnn_r18").train()
    optimizer = torch.optim.AdamW(model.parameters(), 3e-4)
    x = torch.from_numpy(image)[None, None]
    losses = []
    for _ in range(5):
        loss = sum(model(x, [target]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_fine_tuning_keeps_the_model_definition_and_batchnorm_statistics(tmp_path):
    torch.manual_seed(1)
    start = build_maskrcnn("maskrcnn_r18", detections_per_image=16)
    init = tmp_path / "start.pt"
    torch.save(
        {"arch": "maskrcnn_r18", "spec_overrides": {"detections_per_image": 16}, "model": start.state_dict()},
        init,
    )
    out = tmp_path / "ft"
    args = ["--init", str(init), "--sim-fraction", "1", "--crop-px", "128", "--batch-size", "1"]
    main(["--out", str(out), *args, "--steps", "2", "--log-every", "1"])
    tuned = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert tuned["arch"] == "maskrcnn_r18" and tuned["spec_overrides"] == {"detections_per_image": 16}
    before, after = start.state_dict(), tuned["model"]
    for key in ("backbone.body.bn1.running_mean", "backbone.body.layer2.0.bn2.running_var"):
        assert torch.equal(before[key], after[key]), f"{key} changed while fine-tuning"
    assert not torch.equal(before["backbone.body.conv1.weight"], after["backbone.body.conv1.weight"])


def test_fine_tuning_refuses_a_second_initialisation(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--init", "a.pt", "--init-encoder", "b.pt", "--sim-fraction", "1"])
    assert "--init already sets every weight" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_training_on_cuda_without_a_gpu_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--device", "cuda", "--sim-fraction", "1"])
    assert "--device cuda: no CUDA device here; train with --device cpu" in capsys.readouterr().err
