"""Export a trained model to TorchScript for Triton's ``pytorch_libtorch`` backend
(``python -m loopstream.models.export_torchscript {semantic,instance} CHECKPOINT OUT.pt``).

Why TorchScript besides ONNX: on GPU (NGC Triton image) the libtorch backend runs the same model
without the ONNX exporter's restrictions; in particular the instance model gets a dynamic batch,
which the legacy ONNX exporter cannot give it (DESIGN.md section 3).

Both families are compiled with ``torch.jit.script`` (no tracing: scripting keeps every
data-dependent branch and size, so dynamic N, H, W need no re-verification). A semantic
architecture that does not script falls back to ``torch.jit.trace``, and the trace is then
checked against eager at another batch size and tile size before it is saved. Semantic models
are frozen (unused weights dropped, no numerics-changing folding); the instance model has no
unused weights (its ONNX file is as large), so it is saved as scripted.

Tensor names for a ``pytorch_libtorch`` config.pbtxt: that backend binds tensors by position,
named ``INPUT__<i>`` (i-th ``forward`` argument) and ``OUTPUT__<i>`` (i-th returned tensor), as in
``loopstream.serving.core_models.CORE_TENSORS``; ``loopstream-repository add --network model.pt``
hosts the file in a pipeline (Python backend locally, ``pytorch_libtorch`` on GPU):

- semantic: ``INPUT__0`` float32 [N, 1, H, W] standardised frame or tile (H, W multiples of 32)
  -> ``OUTPUT__0`` float32 [N, 2, H, W] logits (foreground, core). N, H, W dynamic
  (``max_batch_size`` > 0, dims [1, -1, -1] / [2, -1, -1]).
- instance: ``INPUT__0`` float32 [N, 1, H, W] (standardised tiles for our models, 8-bit counts for
  imported detectron2 models; normalisation is inside the model) -> ``OUTPUT__0`` boxes float32
  [N, K, 4] (x0, y0, x1, y1, input px), ``OUTPUT__1`` scores float32 [N, K] (best first),
  ``OUTPUT__2`` mask_probs float32 [N, K, 28, 28], ``OUTPUT__3`` counts int64 [N]: image i has
  ``counts[i]`` detections, rows beyond it are zero padding; K = the largest count in the batch
  (dims [-1, 4], [-1], [-1, 28, 28], and [1] with ``reshape: { shape: [] }`` for counts).
  Triton's dynamic batcher may therefore stack tiles of one size from several requests.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from loopstream.models.maskrcnn import LoopMaskRCNN

FAMILIES = ("semantic", "instance")


class BatchedInstanceExport(nn.Module):
    """Scriptable eval-mode face of a :class:`LoopMaskRCNN` for a batch of same-size tiles.

    It calls the model's parts directly (the model's own ``forward`` also returns training losses
    through dict unpacking, which TorchScript cannot compile) and pads the per-image detections
    to the batch's largest count, so Triton can batch tiles into one call.
    """

    if TYPE_CHECKING:  # the buffers, for type checkers only: TorchScript rejects the annotations
        pixel_mean: Tensor
        pixel_std: Tensor

    def __init__(self, model: LoopMaskRCNN) -> None:
        super().__init__()
        self.backbone, self.rpn, self.roi_heads = model.backbone, model.rpn, model.roi_heads
        self.register_buffer("pixel_mean", model.pixel_mean.clone())
        self.register_buffer("pixel_std", model.pixel_std.clone())

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = (image - self.pixel_mean) / self.pixel_std  # [N, 1, H, W] -> [N, 3, H, W], as the model
        h, w = x.shape[-2], x.shape[-1]
        sizes = [(h, w) for _ in range(x.shape[0])]
        features = self.backbone(x)
        proposals, _ = self.rpn(ImageList(x, sizes), features, None)
        detections, _ = self.roi_heads(features, proposals, sizes, None)
        n, k = len(detections), 0
        for d in detections:
            k = max(k, d["boxes"].shape[0])
        boxes = x.new_zeros((n, k, 4))
        scores = x.new_zeros((n, k))
        masks = x.new_zeros((n, k, 28, 28))  # the mask head's 28 x 28 px
        counts = torch.zeros((n,), dtype=torch.int64, device=x.device)
        for i, d in enumerate(detections):
            c = d["boxes"].shape[0]
            boxes[i, :c] = d["boxes"]
            scores[i, :c] = d["scores"]
            masks[i, :c] = d["masks"][:, 0]
            counts[i] = c
        return boxes, scores, masks, counts


def script_semantic(model: nn.Module, example_px: int = 256) -> torch.jit.ScriptModule:
    """TorchScript of a semantic model: scripted, or traced and verified for dynamic N, H, W."""
    model = model.eval()
    try:
        return _freeze(torch.jit.script(model))
    except Exception:  # some encoders (e.g. SegFormer's) may not script; tracing is the fallback
        with torch.no_grad():
            traced = torch.jit.trace(model, torch.zeros(1, 1, example_px, example_px))
        x = torch.randn(2, 1, example_px // 2, example_px + 64)  # other N, H, W than the trace's
        with torch.no_grad():
            ours, ref = traced(x), model(x)
        if ours.shape != ref.shape or float((ours - ref).abs().max()) > 1e-4 * max(float(ref.abs().max()), 1):
            raise RuntimeError("traced semantic model is not shape-generic; cannot export it") from None
        return _freeze(traced)


def _freeze(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """Keep only the weights ``forward`` uses (some smp encoders hold stages they never run).
    ``optimize_numerics=False`` skips BatchNorm folding, so the frozen model computes exactly what
    eager does."""
    return torch.jit.freeze(module, optimize_numerics=False)


def script_instance(model: LoopMaskRCNN) -> torch.jit.ScriptModule:
    """TorchScript of an instance model (batched, padded outputs; see the module docstring)."""
    return torch.jit.script(BatchedInstanceExport(model.eval()).eval())


def export_torchscript(family: str, model: nn.Module, path: str | Path) -> Path:
    """Write the TorchScript of ``model`` (family ``semantic`` or ``instance``); returns the path."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if family == "semantic":
        scripted = script_semantic(model)
    elif isinstance(model, LoopMaskRCNN):
        scripted = script_instance(model)
    else:
        raise TypeError(f"the instance family scripts a LoopMaskRCNN, not a {type(model).__name__}")
    torch.jit.save(scripted, str(path))
    return path


def load_model(family: str, checkpoint: str | Path) -> nn.Module:
    """The eager eval-mode model of a training checkpoint (or imported detectron2 model)."""
    if family == "semantic":
        from loopstream.models.predict import load_checkpoint_model

        return load_checkpoint_model(checkpoint)
    from loopstream.models.export_instance import load_instance_checkpoint

    return load_instance_checkpoint(checkpoint)


def semantic_differences(model: nn.Module, scripted: torch.jit.ScriptModule, x: np.ndarray) -> float:
    """Largest |TorchScript - eager| logit on ``x`` [N, 1, H, W], relative to max |eager logit|."""
    with torch.no_grad():
        ref, ours = model(torch.from_numpy(x)), scripted(torch.from_numpy(x))
    return float((ours - ref).abs().max()) / max(float(ref.abs().max()), 1.0)


def instance_eager(model: LoopMaskRCNN, x: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Per-image eager (boxes, scores, mask_probs) of a batch ``x`` [N, 1, H, W], one call per image."""
    out: list[tuple[np.ndarray, ...]] = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            d = model(torch.from_numpy(x[i : i + 1]))[0]
            out.append((d["boxes"].numpy(), d["scores"].numpy(), d["masks"][:, 0].numpy()))
    return out


def instance_scripted(scripted: torch.jit.ScriptModule, x: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Per-image (boxes, scores, mask_probs) of one batched TorchScript call, padding removed."""
    with torch.no_grad():
        boxes, scores, masks, counts = scripted(torch.from_numpy(x))
    return [(boxes[i, :c].numpy(), scores[i, :c].numpy(), masks[i, :c].numpy()) for i, c in enumerate(counts)]


def max_differences(a: list[tuple[np.ndarray, ...]], b: list[tuple[np.ndarray, ...]]) -> tuple[float, ...]:
    """Largest |a - b| of boxes (px), scores and mask probabilities; inf if detection counts differ."""
    worst = [0.0, 0.0, 0.0]
    for per_a, per_b in zip(a, b, strict=True):
        for j, (u, v) in enumerate(zip(per_a, per_b, strict=True)):
            worst[j] = max(worst[j], float(np.abs(u - v).max()) if u.shape == v.shape and u.size else 0.0)
            if u.shape != v.shape:
                worst[j] = float("inf")
    return tuple(worst)


def real_tile(path: str | Path, px: int = 512) -> np.ndarray:
    """A standardised [1, 1, px, px] tile from the top-left of a grey image file."""
    import cv2

    from loopstream.core.imaging import standardise

    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(path)
    return standardise(image)[None, None, :px, :px]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("family", choices=FAMILIES)
    p.add_argument("checkpoint", type=Path, help="training checkpoint (semantic last.pt / instance model.pt)")
    p.add_argument("output", type=Path, help="TorchScript file to write, e.g. build/torchscript/model.pt")
    p.add_argument("--image", type=Path, help="grey image for the parity check (default: random input)")
    p.add_argument("--onnx", type=Path, help="also compare ONNX Runtime on this exported ONNX file")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    model = load_model(args.family, args.checkpoint)
    export_torchscript(args.family, model, args.output)
    scripted = torch.jit.load(str(args.output))
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB)")
    if args.image is not None:
        x = real_tile(args.image)
    else:
        x = np.random.default_rng(0).standard_normal((1, 1, 512, 512)).astype(np.float32)
    if args.family == "semantic":
        print(f"max |TorchScript - eager| / max|logit|: {semantic_differences(model, scripted, x):.2e}")
        if args.onnx is not None:
            from loopstream.models.predict import onnx_logits

            with torch.no_grad():
                ts = scripted(torch.from_numpy(x)).numpy()
            diff = float(np.abs(onnx_logits(args.onnx)(x) - ts).max()) / max(float(np.abs(ts).max()), 1.0)
            print(f"max |ORT - TorchScript| / max|logit|: {diff:.2e}")
        return
    batch = np.concatenate([x, x[:, :, ::-1, :].copy()])  # a batch of two tiles: dynamic N
    ours = instance_scripted(scripted, batch)
    assert isinstance(model, LoopMaskRCNN)  # what load_model gives for the instance family
    boxes, scores, masks = max_differences(ours, instance_eager(model, batch))
    counts = [len(o[1]) for o in ours]
    print(f"detections per tile {counts}; max |TorchScript - eager|: boxes {boxes:.2e} px, ", end="")
    print(f"scores {scores:.2e}, mask probs {masks:.2e}")
    if args.onnx is not None:
        from loopstream.models.export_instance import onnx_tile_fn

        run = onnx_tile_fn(args.onnx)
        boxes, scores, masks = max_differences([run(batch[i : i + 1]) for i in range(2)], ours)
        print(f"max |ORT - TorchScript|: boxes {boxes:.2e} px, scores {scores:.2e}, mask probs {masks:.2e}")


if __name__ == "__main__":
    main()
