"""The core networks behind a pipeline, in either exported format, behind one interface.

A core version directory holds ``model.onnx`` (run by ONNX Runtime) or ``model.pt`` (TorchScript,
run by libtorch). Both are served the same way: Triton's Python backend locally (the nvidia-pytriton
tritonserver has no other backend), the native ``onnxruntime`` / ``pytorch_libtorch`` backends on
GPU. The tensor names are each format's own: the ONNX graphs' names, and the ``INPUT__<i>`` /
``OUTPUT__<i>`` positional names the libtorch backend binds (``loopstream.models.export_torchscript``
documents both contracts).

Examples
--------
>>> core_format("runs/unet.pt"), CORE_TENSORS["torchscript", "semantic"].outputs
('torchscript', ('OUTPUT__0',))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

CORE_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}


@dataclass(frozen=True)
class CoreTensors:
    input: str
    outputs: tuple[str, ...]


CORE_TENSORS: dict[tuple[str, str], CoreTensors] = {
    ("onnx", "semantic"): CoreTensors("image", ("logits",)),
    ("onnx", "instance"): CoreTensors("image", ("boxes", "scores", "mask_probs")),
    ("torchscript", "semantic"): CoreTensors("INPUT__0", ("OUTPUT__0",)),  # logits
    # boxes, scores, mask_probs padded to the batch's largest count, then the count of each tile
    ("torchscript", "instance"): CoreTensors(
        "INPUT__0", ("OUTPUT__0", "OUTPUT__1", "OUTPUT__2", "OUTPUT__3")
    ),
}


def core_format(path: str | Path) -> str:
    """The format of an exported network file, from its suffix."""
    suffix = Path(path).suffix
    for fmt, name in CORE_FILES.items():
        if suffix == Path(name).suffix:
            return fmt
    raise ValueError(
        f"{path}: unknown network file type {suffix!r}; export to ONNX (.onnx) or TorchScript (.pt)"
    )


class OnnxModel:
    """One ONNX model on the CPU with a fixed thread budget (Triton instances share the cores)."""

    def __init__(self, path: Path, intra_op_threads: int = 2) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All outputs by name."""
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs), strict=True))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The first output for a single-input network: the common case of the semantic models."""
        return self.session.run(self.output_names[:1], {self.input_names[0]: batch})[0]


class TorchScriptModel:
    """One TorchScript model on the CPU, with the libtorch backend's positional tensor names."""

    def __init__(self, path: Path, intra_op_threads: int = 2) -> None:
        try:
            import torch  # the serving install stays torch-free unless TorchScript cores are used
            import torchvision  # noqa: F401  registers torchvision::nms and roi_align for Mask R-CNN
        except ImportError as exc:
            raise RuntimeError(
                f"{path} is a TorchScript network, which needs PyTorch: install loopstream[models] "
                "(scripts/bootstrap models) or serve the ONNX export instead"
            ) from exc
        self._torch = torch
        torch.set_num_threads(intra_op_threads)
        self.module = torch.jit.load(str(path), map_location="cpu").eval()
        self.input_names = ["INPUT__0"]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All outputs, named ``OUTPUT__<i>`` in the order the network returns them."""
        with self._torch.inference_mode():
            out = self.module(self._torch.from_numpy(np.ascontiguousarray(inputs["INPUT__0"])))
        outputs = out if isinstance(out, tuple) else (out,)
        return {f"OUTPUT__{i}": t.numpy() for i, t in enumerate(outputs)}


def open_core(version_dir: Path, intra_op_threads: int = 2) -> OnnxModel | TorchScriptModel:
    """The network of a core version directory (or a network file), whichever format it was
    exported to."""
    if Path(version_dir).is_file():
        runtime = OnnxModel if core_format(version_dir) == "onnx" else TorchScriptModel
        return runtime(Path(version_dir), intra_op_threads)
    for fmt, name in CORE_FILES.items():
        if (Path(version_dir) / name).exists():
            runtime = OnnxModel if fmt == "onnx" else TorchScriptModel
            return runtime(Path(version_dir) / name, intra_op_threads)
    raise FileNotFoundError(f"{version_dir} holds no network: expected one of {sorted(CORE_FILES.values())}")
