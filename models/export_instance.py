"""Export an instance model to ONNX (``python -m loopstream.models.export_instance``).

Contract of the core model (one 512 px tile per call; Triton batches by tiles):

- input ``image`` float32 [1, 1, H, W], H and W dynamic multiples of 32: a standardised tile for
  our models, 8-bit grey counts for imported detectron2 models (``pixel_mean`` / ``pixel_std``
  are inside the graph either way);
- outputs ``boxes`` float32 [K, 4] (x0, y0, x1, y1, input px), ``scores`` float32 [K] (best
  first), ``mask_probs`` float32 [K, 28, 28] (loop probability inside each box), K dynamic.

The legacy TorchScript-based exporter is used (``dynamo=False``, opset 17), the only one that
exports torchvision's detection models here; the batch size is fixed at 1 by that exporter's
handling of the per-image proposal lists (DESIGN.md section 3). ``--fp16`` stores the weights in
half precision (the graph casts them back to float32 for compute) to halve the file.

``--slim-checkpoint PATH`` also writes the weights alone in half precision
(``loopstream.models.training_run.write_slim_checkpoint``) and exports the ONNX file from those
same rounded weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from loopstream.models.maskrcnn import LoopMaskRCNN, SingleImageExport, build_maskrcnn
from loopstream.models.training_run import checkpoint_header, write_slim_checkpoint

INPUT_NAME = "image"
OUTPUT_NAMES = ["boxes", "scores", "mask_probs"]
DYNAMIC_AXES = {
    INPUT_NAME: {2: "height", 3: "width"},
    **{name: {0: "detections"} for name in OUTPUT_NAMES},
}


def load_instance_checkpoint(path: str | Path) -> LoopMaskRCNN:
    """The eval-mode model of a ``train_instance`` checkpoint or of an imported detectron2 model."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = build_maskrcnn(state["arch"], **state.get("spec_overrides", {}))
    model.load_state_dict(state["model"])
    if "cell_anchors" in state:
        model.rpn.anchor_generator.cell_anchors = state["cell_anchors"]
    return model.eval()


def export_onnx(model: LoopMaskRCNN, path: str | Path, example_px: int = 256, fp16: bool = False) -> Path:
    """Write ``model`` as ONNX (batch 1, dynamic H / W, dynamic detections); returns the path.

    A model with a test-time resize (imported detectron2 configs) is traced at the serving tile,
    512 px: its resize factor is fixed in the graph at the traced size."""
    path = Path(path)
    if model.test_short_side > 0:
        example_px = 512
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 1, example_px, example_px)
    torch.onnx.export(
        SingleImageExport(model.eval()),
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=[INPUT_NAME],
        output_names=OUTPUT_NAMES,
        dynamic_axes=DYNAMIC_AXES,
    )
    _fix_output_shapes(path)
    if fp16:
        _store_weights_fp16(path)
    onnx.checker.check_model(str(path))
    return path


def _fix_output_shapes(path: Path) -> None:
    """Declare the static output sides (4 box coordinates, 28 x 28 masks) the tracer left symbolic,
    so the Triton config and clients read the real shapes from the file."""
    model = onnx.load(str(path))
    static = {"boxes": {1: 4}, "mask_probs": {1: 28, 2: 28}}
    for output in model.graph.output:
        for axis, size in static.get(output.name, {}).items():
            output.type.tensor_type.shape.dim[axis].dim_value = size
    onnx.save(model, str(path))


def _store_weights_fp16(path: Path) -> None:
    """Half-precision storage of large float32 initialisers, each followed by a Cast to float32,
    so every operator still computes in float32 (ONNX Runtime CPU lacks many fp16 kernels)."""
    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or np.prod(init.dims) < 1024:
            continue
        half = numpy_helper.to_array(init).astype(np.float16)
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, f"{name}__fp16"))
        casts.append(onnx.helper.make_node("Cast", [f"{name}__fp16"], [name], to=onnx.TensorProto.FLOAT))
    for node in reversed(casts):
        graph.node.insert(0, node)
    onnx.save(model, str(path))


def onnx_tile_fn(path: str | Path, threads: int = 2):
    """``image`` [1, 1, H, W] -> (boxes, scores, mask_probs) through ONNX Runtime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: tuple(session.run(OUTPUT_NAMES, {INPUT_NAME: x}))


def torch_tile_fn(model: LoopMaskRCNN):
    """``image`` [1, 1, H, W] -> (boxes, scores, mask_probs) through eager PyTorch."""
    wrapper = SingleImageExport(model.eval())

    def run(x: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.no_grad():
            return tuple(t.numpy() for t in wrapper(torch.from_numpy(x)))

    return run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="train_instance last.pt or an imported detectron2 model")
    p.add_argument("output", type=Path, help="ONNX file to write, e.g. build/instance/model.onnx")
    p.add_argument("--fp16", action="store_true", help="store weights in half precision")
    p.add_argument("--slim-checkpoint", type=Path, help="also write the half-precision weights here")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    model = load_instance_checkpoint(args.checkpoint)
    if args.slim_checkpoint is not None:
        write_slim_checkpoint(model, checkpoint_header(args.checkpoint), args.slim_checkpoint)
        print(f"wrote {args.slim_checkpoint} ({args.slim_checkpoint.stat().st_size / 1e6:.1f} MB)")
    export_onnx(model, args.output, fp16=args.fp16)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
