"""Export a trained checkpoint to ONNX for serving (``python -m loopstream.models.export``).

Contract of the core model (``model_repository/loops_semantic_core``): input ``image`` float32
[N, 1, H, W] (a standardised frame or tile; H, W multiples of 32), output ``logits`` float32
[N, 2, H, W] (foreground, core). Batch, height and width are dynamic. The legacy TorchScript-based
exporter is used (``dynamo=False``, opset 17): the only one that exports these models with
dynamic sizes here (DESIGN.md section 3).

``--slim-checkpoint PATH`` also writes the weights alone in half precision
(``loopstream.models.training_run.write_slim_checkpoint``) and exports the ONNX file (float32)
from those same rounded weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import torch

from loopstream.models.predict import load_checkpoint_model, onnx_logits, torch_logits
from loopstream.models.training_run import checkpoint_header, write_slim_checkpoint

INPUT_NAME, OUTPUT_NAME = "image", "logits"
DYNAMIC_AXES = {INPUT_NAME: {0: "n", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "n", 2: "height", 3: "width"}}


def export_onnx(model: torch.nn.Module, path: str | Path, example_px: int = 256) -> Path:
    """Write ``model`` (eval mode) as an ONNX file with dynamic N, H, W; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 1, example_px, example_px)
    torch.onnx.export(
        model.eval(),
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes=DYNAMIC_AXES,
    )
    onnx.checker.check_model(str(path))
    return path


def max_abs_difference(model: torch.nn.Module, path: str | Path, x: np.ndarray) -> float:
    """Largest |ONNX Runtime - eager| logit difference on input ``x`` [N, 1, H, W]."""
    return float(np.abs(onnx_logits(path)(x) - torch_logits(model.eval())(x)).max())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="training checkpoint (last.pt)")
    p.add_argument(
        "output", type=Path, help="ONNX file to write, e.g. model_repository/loops_semantic_core/1/model.onnx"
    )
    p.add_argument("--slim-checkpoint", type=Path, help="also write the half-precision weights here")
    args = p.parse_args(argv)
    model = load_checkpoint_model(args.checkpoint)
    if args.slim_checkpoint is not None:
        write_slim_checkpoint(model, checkpoint_header(args.checkpoint), args.slim_checkpoint)
        print(f"wrote {args.slim_checkpoint} ({args.slim_checkpoint.stat().st_size / 1e6:.1f} MB)")
    export_onnx(model, args.output)
    x = np.random.default_rng(0).standard_normal((2, 1, 512, 384)).astype(np.float32)
    size_mb = args.output.stat().st_size / 1e6
    difference = max_abs_difference(model, args.output, x)
    print(f"wrote {args.output} ({size_mb:.1f} MB); max |ORT - eager| logit difference {difference:.2e}")


if __name__ == "__main__":
    main()
