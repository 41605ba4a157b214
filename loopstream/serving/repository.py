"""The Triton model repository, written from model specs in two flavours.

A pipeline version is a pair: ``<pipeline>/<v>/`` (pre/post-processing, settings in
``pipeline.json``) and ``<pipeline>_core/<v>/model.onnx`` or ``model.pt`` (the network, exported to
ONNX or TorchScript; all versions of a pipeline share one format, since they share one core
config). The flavour decides how they are served:

- ``local``: both in Triton's Python backend, the network run by ONNX Runtime or libtorch on the
  CPU (the tritonserver of the nvidia-pytriton wheel has no other backend). Glue files are
  symlinks into ``loopstream/serving/backends`` so every version runs the same code, and a
  version whose network has the same bytes as another's links to that file (``add_version``).
- ``gpu``: the NGC tritonserver image; an ONNX network on the native ``onnxruntime`` backend with
  the TensorRT accelerator in FP16, a TorchScript one on ``pytorch_libtorch``; GPU instances and
  pinned memory; the pipeline stays in Python. Semantic ONNX networks ship float16 weights
  (``half_precision_network``: half the file, float32 inputs and outputs); building this flavour
  needs ``onnx`` (the ``models`` extra).

Every ``config.pbtxt`` is built as a ``model_config_pb2.ModelConfig`` message, so it is valid
protobuf text by construction; tests parse it back.

Example::

    loopstream-repository add --pipeline loops_semantic --network unet.onnx --spec spec.json
    loopstream-repository build --flavour gpu --out build/gpu-repository
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from loopstream.serving.core_models import CORE_FILES, core_format
from loopstream.serving.pipelines import Pipeline, PipelineSpec

FLAVOURS = ("local", "gpu")
BACKENDS = Path(__file__).resolve().parent / "backends"
GLUE = {
    "pipeline": BACKENDS / "pipeline.py",
    "core": BACKENDS / "core.py",
    "noop": BACKENDS / "noop_pipeline.py",
}


def pipelines_in(repository: Path) -> list[str]:
    return sorted({p.parent.parent.name for p in repository.glob("*/*/pipeline.json")})


def versions_of(repository: Path, pipeline: str) -> list[int]:
    return sorted(int(p.parent.name) for p in (repository / pipeline).glob("*/pipeline.json"))


def default_version(repository: Path, pipeline: str) -> int:
    """The version Triton serves to a request naming none: the highest one in the repository."""
    return max(versions_of(repository, pipeline))


# Pipeline instances of the GPU flavour, one CPU core each: 4 microscopes x 30 frames/s x 72 ms
# of CPU work per 2048² frame (27 ms preparation + 44.7 ms post-processing, bench_postprocessing.py,
# 2026-12-02 at load 2) keep 9 busy; the time an instance waits for the GPU is not in it (not
# measured: no GPU lent).
GPU_PIPELINE_INSTANCES = 9


def pipeline_config(name: str, versions: list[int], flavour: str = "local") -> mc.ModelConfig:
    """Frame in (uint8 or uint16, any size), loop ellipses out; the same in both flavours but for
    the instance count."""
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    config.version_policy.specific.versions.extend(versions)
    config.input.add(name="FRAME_U8", data_type=mc.TYPE_UINT8, dims=[-1, -1], optional=True)
    config.input.add(name="FRAME_U16", data_type=mc.TYPE_UINT16, dims=[-1, -1], optional=True)
    # Per loop: score, x, y, major, minor, angle_deg, area, bbox x, y, width, height (px).
    config.output.add(name="DETECTIONS", data_type=mc.TYPE_FP32, dims=[-1, 11])
    # Only when requested: per loop, its mask in its bbox as COCO RLE JSON (loopstream.core.masks).
    config.output.add(name="MASKS_RLE", data_type=mc.TYPE_STRING, dims=[-1])
    # Locally four instances: frames of up to four microscopes are tiled and post-processed at
    # once, so their tiles meet in the core model's queue and are batched together.
    count = 4 if flavour == "local" else GPU_PIPELINE_INSTANCES
    config.instance_group.add(count=count, kind=mc.ModelInstanceGroup.KIND_CPU)
    return config


def core_config(name: str, versions: list[int], flavour: str, spec: PipelineSpec) -> mc.ModelConfig:
    """The network on standardised tiles, as the family's exported graph takes them.

    Semantic networks take batches [N, 1, T, T] -> logits [N, 2, T, T], dynamically batched.
    Instance networks exported to ONNX have batch 1 and ragged outputs (boxes [K, 4], scores [K],
    mask_probs [K, 28, 28]): one tile per request, no batching, parallel instances. Exported to
    TorchScript they take batches and pad the detections, with a count per tile, so they batch too.
    """
    local = flavour == "local"
    tensors = Pipeline(spec).tensors
    batched = spec.family == "semantic" or spec.core_format == "torchscript"
    if local:
        config = mc.ModelConfig(name=name, backend="python")
    elif spec.core_format == "onnx":
        config = mc.ModelConfig(name=name, backend="onnxruntime")
    else:
        config = mc.ModelConfig(name=name, platform="pytorch_libtorch")
    config.version_policy.specific.versions.extend(versions)
    # Shapes are dynamic: warming up on one 512 px tile readies the runtime without the seconds a
    # whole-frame (2048 px) tile would take on CPU at every load.
    tile = [min(spec.tile_px, 512)] * 2
    if batched:
        config.max_batch_size = 8 if local else 16
        config.input.add(name=tensors.input, data_type=mc.TYPE_FP32, dims=[1, -1, -1])
        # Queue delay chosen with bench/bench_batching.py: on CPU a longer wait buys no throughput.
        config.dynamic_batching.max_queue_delay_microseconds = 2000 if local else 5000
        if not local:
            config.dynamic_batching.preferred_batch_size.extend([8, 16])
        warmup_dims = [1, *tile]
    else:
        config.input.add(name=tensors.input, data_type=mc.TYPE_FP32, dims=[1, 1, -1, -1])
        warmup_dims = [1, 1, *tile]
    if spec.family == "semantic":
        config.output.add(name=tensors.outputs[0], data_type=mc.TYPE_FP32, dims=[2, -1, -1])
    else:
        boxes, scores, masks = tensors.outputs[:3]
        config.output.add(name=boxes, data_type=mc.TYPE_FP32, dims=[-1, 4])
        config.output.add(name=scores, data_type=mc.TYPE_FP32, dims=[-1])
        config.output.add(name=masks, data_type=mc.TYPE_FP32, dims=[-1, 28, 28])
        if batched:  # the detection count of each tile: a scalar per batch item
            counts = config.output.add(name=tensors.outputs[3], data_type=mc.TYPE_INT64, dims=[1])
            counts.reshape.shape[:] = []
    warmup = config.model_warmup.add(name="tile", batch_size=1)
    warmup.inputs[tensors.input].CopyFrom(
        mc.ModelWarmup.Input(data_type=mc.TYPE_FP32, dims=warmup_dims, zero_data=True)
    )
    instances = 1 if spec.family == "semantic" else 2
    if local:
        # One runtime of 2 threads per instance; instance networks get two, so the tiles of a
        # frame overlap with each other's pre/post-processing.
        config.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_CPU)
        config.parameters["intra_op_threads"].string_value = "2"
        return config
    config.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_GPU)
    if spec.core_format == "onnx":
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt"
        )
        accelerator.parameters["precision_mode"] = "FP16"
        accelerator.parameters["max_workspace_size_bytes"] = str(2 << 30)
        accelerator.parameters["trt_engine_cache_enable"] = "1"
    config.optimization.input_pinned_memory.enable = True
    config.optimization.output_pinned_memory.enable = True
    return config


def write_configs(repository: Path, flavour: str = "local") -> list[Path]:
    """(Re)write every config.pbtxt (and, locally, the glue links) of every pipeline in ``repository``."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; choose one of {FLAVOURS}")
    written = []
    for pipeline in pipelines_in(repository):
        versions = versions_of(repository, pipeline)
        specs = {v: _spec(repository, pipeline, v) for v in versions}
        _check_one_format(pipeline, specs)
        spec = specs[versions[-1]]
        core = f"{pipeline}_core"
        for name, config in (
            (pipeline, pipeline_config(pipeline, versions, flavour)),
            (core, core_config(core, versions, flavour, spec)),
        ):
            path = repository / name / "config.pbtxt"
            path.write_text(text_format.MessageToString(config))
            written.append(path)
        for version in versions:
            _place_glue(repository / pipeline / str(version) / "model.py", GLUE["pipeline"])
            core_glue = repository / core / str(version) / "model.py"
            if flavour == "local":
                _place_glue(core_glue, GLUE["core"])
            else:
                core_glue.unlink(missing_ok=True)
    return written


def add_version(
    repository: Path, pipeline: str, spec: PipelineSpec, network: Path, version: int | None = None
) -> int:
    """Add (or replace) a version of ``pipeline`` from an exported network (``.onnx`` or ``.pt``);
    returns its number. The spec's ``core_format`` is set from the file."""
    if not Path(network).is_file():
        raise FileNotFoundError(
            f"{network}: no such network file; export one with python -m loopstream.models.export "
            "(or export_instance / export_torchscript)"
        )
    spec = replace(spec, core_format=core_format(network))
    existing = versions_of(repository, pipeline)
    version = version if version is not None else (existing[-1] + 1 if existing else 1)
    _check_one_format(
        pipeline, {v: _spec(repository, pipeline, v) for v in existing if v != version} | {version: spec}
    )
    (repository / pipeline / str(version)).mkdir(parents=True, exist_ok=True)
    core_dir = repository / f"{pipeline}_core" / str(version)
    core_dir.mkdir(parents=True, exist_ok=True)
    target = core_dir / CORE_FILES[spec.core_format]
    for stale in CORE_FILES.values():
        if core_dir / stale != target:
            (core_dir / stale).unlink(missing_ok=True)
    if not (target.is_file() and filecmp.cmp(network, target, shallow=False)):
        _place_network(repository, pipeline, version, Path(network), target)
    spec.write(repository / pipeline / str(version) / "pipeline.json")
    write_configs(repository, "local")
    return version


def _place_network(repository: Path, pipeline: str, version: int, network: Path, target: Path) -> None:
    """Put ``network`` at ``target``: a relative link to another version's file with the same
    bytes (a version that changes only post-processing ships no second copy of its network), else
    a copy. Versions linked to the file being replaced get their own copy of it first."""
    core = repository / f"{pipeline}_core"
    files = [core / str(v) / target.name for v in versions_of(repository, pipeline) if v != version]
    if target.is_file() and not target.is_symlink():
        for linked in (f for f in files if f.is_symlink() and f.samefile(target)):
            linked.unlink()
            shutil.copyfile(target, linked)
    real_files = (f for f in files if f.is_file() and not f.is_symlink())
    same = next((f for f in real_files if filecmp.cmp(f, network, shallow=False)), None)
    target.unlink(missing_ok=True)
    if same is None:
        shutil.copyfile(network, target)
    else:
        target.symlink_to(os.path.relpath(same, target.parent))


def add_noop_pipeline(repository: Path, name: str = "loops_noop") -> str:
    """A pipeline with the real one's inputs and outputs that finds nothing: for wire benchmarks."""
    (repository / name / "1").mkdir(parents=True, exist_ok=True)
    (repository / name / "config.pbtxt").write_text(text_format.MessageToString(pipeline_config(name, [1])))
    _place_glue(repository / name / "1" / "model.py", GLUE["noop"])
    return name


def build_flavour(source: Path, out: Path, flavour: str) -> Path:
    """A self-contained repository of ``flavour`` (real files, no links) from ``source``."""
    if out.exists():
        shutil.rmtree(out)
    for pipeline in pipelines_in(source):
        for version in versions_of(source, pipeline):
            spec = _spec(source, pipeline, version)
            network = CORE_FILES[spec.core_format]
            half = flavour == "gpu" and spec.family == "semantic" and spec.core_format == "onnx"
            for name, file in ((pipeline, "pipeline.json"), (f"{pipeline}_core", network)):
                target = out / name / str(version) / file
                target.parent.mkdir(parents=True, exist_ok=True)
                if half and file == network:
                    half_precision_network(source / name / str(version) / file, target)
                else:
                    shutil.copyfile(source / name / str(version) / file, target)
    write_configs(out, flavour)
    for link in out.rglob("model.py"):
        real = link.resolve()
        link.unlink()
        shutil.copyfile(real, link)
    return out


def half_precision_network(source: Path, target: Path) -> None:
    """The ONNX graph at ``source`` with float16 weights and arithmetic but float32 inputs and
    outputs, written to ``target`` (ONNX Runtime's converter): half the file and of the weights'
    GPU memory, with the tensors the pipeline exchanges unchanged. TensorRT's FP16 mode already
    computes in half precision; this only stops shipping (and casting) float32 weights."""
    import onnx  # the models extra: only a GPU-flavour build needs it
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(source), keep_io_types=True), target)


def _spec(repository: Path, pipeline: str, version: int) -> PipelineSpec:
    return PipelineSpec.read(repository / pipeline / str(version) / "pipeline.json")


def _check_one_format(pipeline: str, specs: dict[int, PipelineSpec]) -> None:
    """All versions of a pipeline share one core config, so one core format."""
    formats = {v: s.core_format for v, s in sorted(specs.items())}
    if len(set(formats.values())) > 1:
        raise ValueError(
            f"{pipeline}: versions would mix core formats {formats}; one core config serves them "
            "all, so add the other format as a pipeline of its own (--pipeline NAME)"
        )


def _place_glue(path: Path, target: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to(os.path.relpath(target, path.parent))


def main(argv: list[str] | None = None) -> int:
    from loopstream.serving.triton import REPOSITORY

    parser = argparse.ArgumentParser(prog="loopstream-repository", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a pipeline version from an exported network")
    add.add_argument("--pipeline", default="loops_semantic")
    add.add_argument("--network", type=Path, required=True, help="exported network: model.onnx or model.pt")
    add.add_argument("--spec", type=Path, required=True, help="pipeline.json settings of the version")
    add.add_argument("--version", type=int, default=None, help="default: the next free number")
    build = commands.add_parser("build", help="write a self-contained repository of one flavour")
    build.add_argument("--flavour", choices=FLAVOURS, required=True)
    build.add_argument("--out", type=Path, required=True)
    commands.add_parser("refresh", help="rewrite the configs of the local repository")
    args = parser.parse_args(argv)
    if args.command == "add":
        try:
            version = add_version(
                args.repository, args.pipeline, PipelineSpec.read(args.spec), args.network, args.version
            )
        except (ValueError, FileNotFoundError) as exc:
            parser.error(str(exc))  # exits 2 with the reason, no traceback
        print(f"added {args.pipeline} version {version} to {args.repository}")
    elif args.command == "build":
        print(
            f"wrote the {args.flavour} repository to {build_flavour(args.repository, args.out, args.flavour)}"
        )
    else:
        for path in write_configs(args.repository, "local"):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
