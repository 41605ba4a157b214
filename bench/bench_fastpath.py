"""The fast path in one run: 2048² frame time before/after, FLOPs, and the fraction of peak.

On one simulated 2048² frame, with ONNX Runtime on ``--threads`` threads:

- U-Net, before: the served pipeline until now (``loops_semantic`` v2: 25 tiles of 512 px with
  64 px overlap, then the full-frame post-processing: stitch, sigmoid, scipy labels, whole-frame
  watershed, the plausibility filter); after: the default pipeline (v3: the same network on the
  whole frame, post-processing on crops). Both give their detections; their matched-loop F1 is printed.
- The networks' FLOPs per 2048² frame (``torch.utils.flop_counter`` on the eager models; U-Net
  per 512² tile x tiles, exact for a fully convolutional net; Mask R-CNN on a real creme tile
  x 25 tiles, its heads' work depends on the detections), this machine's peak (float32 matrix
  product in PyTorch on the same threads) and the fraction of it each network reaches.
- Mask R-CNN's tile grids before (v3: square 512 px tiles) and after (the default: the fewest
  tiles that overlap 96 px, sides at the FPN's stride) and the network pixels they cost, for a
  few frame shapes: counted, not timed (a 2048² frame has the same 25 tiles either way).
- ONNX Runtime graph optimisation levels on one 512² U-Net tile.

Wall time, best of ``--repeats``; the machine is shared, so read the ratios within the run.

    nice -n 10 .venv/bin/python bench/bench_fastpath.py --threads 2 --repeats 2
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import onnxruntime as ort
import torch
from timing import best_seconds  # this folder is on sys.path when a benchmark runs
from torch.utils.flop_counter import FlopCounterMode

from loopstream.client.shadow import agreement
from loopstream.core.ellipses import detections_from_labels, labels_from_probability, probability
from loopstream.core.imaging import cut_tiles, standardise, stitch, tile_grid
from loopstream.core.plausibility import plausible_loops
from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.models.export_instance import load_instance_checkpoint
from loopstream.models.maskrcnn import SingleImageExport
from loopstream.models.predict import load_checkpoint_model
from loopstream.serving.core_models import OnnxModel
from loopstream.serving.pipelines import Pipeline, PipelineSpec
from loopstream.serving.repository import default_version
from loopstream.serving.triton import REPOSITORY

ROOT = REPOSITORY.parent
CREME_TILE = ROOT.parent / "shared" / "data" / "creme-ds25s" / "train" / "imgs" / "3.png"


def peak_gflops(threads: int, n: int = 4096, repeats: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / best_seconds(lambda: a @ b, repeats) / 1e9


def flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def spec_of(pipeline: str, version: int) -> PipelineSpec:
    return PipelineSpec.read(REPOSITORY / pipeline / str(version) / "pipeline.json")


def instance_grids(before_version: int) -> None:
    """Mask R-CNN's tiles before (square 512 px, 64 px overlap) and after (the default version: the
    fewest tiles that overlap enough, sides at the FPN's stride), and the network pixels they cost
    (each tile is padded to a multiple of 32 inside the network)."""
    after_version = default_version(REPOSITORY, "loops_instance")
    before, after = (
        Pipeline(spec_of("loops_instance", before_version)),
        Pipeline(spec_of("loops_instance", after_version)),
    )

    def grid(pipeline: Pipeline, shape: tuple[int, int]) -> tuple[str, float]:
        tiles = pipeline.prepare(np.zeros(shape, np.uint8)).tiles
        side = [-(-n // 32) * 32 for n in (tiles[0].height, tiles[0].width)]
        return f"{len(tiles)} x {tiles[0].height}x{tiles[0].width}", len(tiles) * side[0] * side[1] / 1e6

    print(
        f"\nMask R-CNN tile grids, loops_instance v{before_version} -> v{after_version} (network Mpx a frame)"
    )
    print("| frame | tiles before | Mpx | tiles after | Mpx | fewer pixels |")
    print("|---|---|---|---|---|---|")
    for shape in [(2048, 2048), (1024, 1024), (710, 1120), (300, 500)]:
        (b, b_mpx), (a, a_mpx) = grid(before, shape), grid(after, shape)
        print(f"| {shape[0]} x {shape[1]} | {b} | {b_mpx:.2f} | {a} | {a_mpx:.2f} | {b_mpx / a_mpx:.2f}x |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--before", type=int, default=2, help="loops_semantic version of before")
    p.add_argument("--before-instance", type=int, default=3, help="loops_instance version of before")
    args = p.parse_args()
    cv2.setNumThreads(1)
    frame = SimulatedMicroscope(SimulationConfig(shape=(2048, 2048), n_frames=1), seed=0).render(0)
    after_version = default_version(REPOSITORY, "loops_semantic")
    before, after = (
        Pipeline(spec_of("loops_semantic", args.before)),
        Pipeline(spec_of("loops_semantic", after_version)),
    )
    network = OnnxModel(REPOSITORY / "loops_semantic_core" / str(after_version) / "model.onnx", args.threads)

    def before_frame():
        prepared = before.prepare(frame)
        logits = np.concatenate([network.run(i)["logits"] for i in before.core_inputs(prepared)])
        maps = probability(stitch(logits, prepared.tiles, prepared.shape))
        labels = labels_from_probability(maps[0], maps[1], before.spec.threshold, before.spec.min_area_px)
        detections = detections_from_labels(labels, maps[0])
        keep = plausible_loops(detections, prepared.image, before.spec.min_contrast, before.spec.min_major_px)
        return detections[keep].reset_index(drop=True)  # as every served version filters

    def network_only(pipeline: Pipeline):
        prepared = pipeline.prepare(frame)
        return lambda: [network.run(i) for i in pipeline.core_inputs(prepared)]

    print(f"U-Net, 2048² frame, {args.threads} threads, wall s, best of {args.repeats}")
    t_before = best_seconds(before_frame, args.repeats)
    t_after = best_seconds(lambda: after.analyse(frame, network.run), args.repeats)
    net_before = best_seconds(network_only(before), args.repeats)
    net_after = best_seconds(network_only(after), args.repeats)
    match = agreement(before_frame(), after.analyse(frame, network.run))
    print(
        f"| frame s before (v{args.before}) | after (v{after_version}) | speed-up | network s before | after "
        "| speed-up | matched-loop F1 after vs before |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {t_before:.2f} | {t_after:.2f} | {t_before / t_after:.2f}x | {net_before:.2f} | {net_after:.2f} "
        f"| {net_before / net_after:.2f}x | {match.f1:.3f} ({match.matched}/{match.session_count}) |"
    )

    peak = peak_gflops(args.threads)
    unet = load_checkpoint_model(ROOT / "models" / "checkpoints" / "loops_semantic_v2.pt").eval()
    unet_tile = flops(unet, torch.zeros(1, 1, 512, 512))
    instance = SingleImageExport(
        load_instance_checkpoint(ROOT / "models" / "checkpoints" / "loops_instance_v3.pt").eval()
    )
    creme = standardise(cv2.imread(str(CREME_TILE), cv2.IMREAD_GRAYSCALE))[None, None, :512, :512]
    instance_tile = flops(instance, torch.from_numpy(np.ascontiguousarray(creme)))
    instance_core = OnnxModel(REPOSITORY / "loops_instance_core" / "3" / "model.onnx", args.threads)
    t_instance_tile = best_seconds(lambda: instance_core.run({"image": creme}), args.repeats + 1)
    n_tiles = len(tile_grid(frame.shape, 512, 64))
    print(f"\nPeak: float32 matrix product 4096², PyTorch, {args.threads} threads: {peak:.1f} GFLOP/s")
    print(
        "| network (ONNX Runtime) | GFLOP per 2048² frame | frame s (network) | GFLOP/s | fraction of peak |"
    )
    print("|---|---|---|---|---|")
    rows = [
        (f"U-Net, {n_tiles} tiles of 512² (before)", unet_tile * n_tiles, net_before),
        ("U-Net, whole frame (after)", unet_tile * 16, net_after),
        (
            f"Mask R-CNN R18-FPN, {n_tiles} tiles of 512² (tile time x {n_tiles})",
            instance_tile * n_tiles,
            t_instance_tile * n_tiles,
        ),
    ]
    for name, total, seconds in rows:
        rate = total / seconds / 1e9
        print(f"| {name} | {total / 1e9:.0f} | {seconds:.2f} | {rate:.1f} | {rate / peak:.2f} |")

    instance_grids(args.before_instance)

    print("\nONNX Runtime graph optimisation, U-Net tile 512², ms")
    tile = cut_tiles(standardise(frame), tile_grid((512, 512), 512, 64))
    levels = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all (served)": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    print("| graph optimisation | tile ms | x disabled |")
    print("|---|---|---|")
    base = None
    for name, level in levels.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        options.graph_optimization_level = level
        path = REPOSITORY / "loops_semantic_core" / str(after_version) / "model.onnx"
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, {"image": tile})
        t = best_seconds(lambda s=session: s.run(None, {"image": tile}), args.repeats + 2)
        base = base or t
        print(f"| {name} | {1000 * t:.0f} | {base / t:.2f} |")


if __name__ == "__main__":
    main()
