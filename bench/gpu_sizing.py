"""The GPU sizing run: one script for a session that is lent a GPU (DEVELOPERS.md: device time is
short, so it is bounded; defaults take about 5 minutes on one GPU).

It measures, on that machine:

- the default networks in PyTorch on ``--device`` (CUDA), in ``--dtype`` (fp16 or bf16 autocast,
  channels-last), at batch sizes ``--batches``: the U-Net on whole ``--size``² frames, Mask R-CNN on
  the 512 px tiles of such a frame; latency per batch and frames/s;
- the pipeline's CPU work per frame on one of its cores (frame preparation and post-processing of
  the U-Net's real answer), as one pipeline instance does it;

and from these writes the sizing table (Markdown to stdout, everything as JSON to ``--out``):
microscopes per GPU at 30 and at 5 frames/s, and the pipeline instances (one CPU core each) they
keep busy. On a machine without a GPU, ``--device cpu`` with a small ``--size`` checks the script
(tests/test_gpu_sizing.py); such figures are not GPU figures.

    .venv/bin/python bench/gpu_sizing.py --out gpu_sizing.json       # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import torch
from timing import best_seconds  # this folder is on sys.path when a benchmark runs
from tqdm import tqdm

from loopstream.core.imaging import tile_grid
from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.models.export_instance import load_instance_checkpoint
from loopstream.models.predict import load_checkpoint_model
from loopstream.serving.pipelines import Pipeline, PipelineSpec
from loopstream.serving.repository import default_version
from loopstream.serving.triton import REPOSITORY

CHECKPOINTS = REPOSITORY.parent / "models" / "checkpoints"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
INSTANCE_TILE_PX = 512


def timed(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall seconds of ``repeats`` runs after one warm-up, synchronised with the device."""

    def once() -> float:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    once()
    return min(once() for _ in range(repeats))


def network_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    dtype = DTYPES[args.dtype]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    unet = load_checkpoint_model(CHECKPOINTS / "loops_semantic_v2.pt").to(
        device, memory_format=torch.channels_last
    )
    instance = load_instance_checkpoint(CHECKPOINTS / "loops_instance_v3.pt").eval().to(device)
    tile_px = min(INSTANCE_TILE_PX, args.size)
    tiles_per_frame = len(tile_grid((args.size, args.size), tile_px, 64))
    jobs = [("U-Net, whole frame", b) for b in args.batches] + [
        ("Mask R-CNN, 512 px tiles", b) for b in args.batches
    ]
    rows = []
    for name, batch in tqdm(jobs, desc="networks", unit="config"):
        row = {"network": name, "batch": batch, "dtype": args.dtype, "device": str(device)}
        try:
            with torch.no_grad(), autocast:
                if name.startswith("U-Net"):
                    x = torch.randn(batch, 1, args.size, args.size, device=device)
                    x = x.contiguous(memory_format=torch.channels_last)
                    latency = timed(lambda x=x: unet(x), device, args.repeats)
                    frames = batch
                else:
                    tiles = torch.randn(batch, 1, tile_px, tile_px, device=device)
                    latency = timed(lambda tiles=tiles: instance(tiles), device, args.repeats)
                    frames = batch / tiles_per_frame
            row.update(latency_s=latency, frames_per_s=frames / latency)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as error:  # e.g. out of memory at batch 16
            row["error"] = str(error).splitlines()[0]
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    return rows


def cpu_work_per_frame(args: argparse.Namespace, device: torch.device) -> dict:
    """One pipeline instance's CPU seconds per frame (OpenCV on one thread), on the U-Net's real
    logits for a simulated frame."""
    cv2.setNumThreads(1)
    version = default_version(REPOSITORY, "loops_semantic")
    pipeline = Pipeline(PipelineSpec.read(REPOSITORY / "loops_semantic" / str(version) / "pipeline.json"))
    frame = SimulatedMicroscope(SimulationConfig(shape=(args.size, args.size), n_frames=1), seed=0).render(0)
    unet = load_checkpoint_model(CHECKPOINTS / "loops_semantic_v2.pt").to(device)
    prepared = pipeline.prepare(frame)
    with torch.no_grad():
        outputs = [
            {"logits": unet(torch.from_numpy(i["image"]).to(device)).float().cpu().numpy()}
            for i in pipeline.core_inputs(prepared)
        ]

    def cpu_seconds(run: Callable[[], object]) -> float:
        return best_seconds(run, args.repeats, clock=time.process_time)

    loops = len(pipeline.finish(outputs, prepared)[0])
    return {
        "pipeline_version": version,
        "loops": loops,
        "prepare_s": cpu_seconds(lambda: pipeline.prepare(frame)),
        "post_s": cpu_seconds(lambda: pipeline.finish(outputs, prepared)),
    }


def sizing(rows: list[dict], cpu: dict, rates: list[float]) -> list[dict]:
    """Per network, at its best batch: microscopes per GPU and the pipeline instances they need
    (each instance holds a frame for its CPU work plus the network's latency)."""
    table = []
    for name in dict.fromkeys(r["network"] for r in rows):
        ok = [r for r in rows if r["network"] == name and "frames_per_s" in r]
        if not ok:
            table.append({"network": name, "error": "every batch size failed"})
            continue
        best = max(ok, key=lambda r: r["frames_per_s"])
        per_frame_s = cpu["prepare_s"] + cpu["post_s"] + best["latency_s"]
        for fps in rates:
            microscopes = math.floor(best["frames_per_s"] / fps)
            table.append(
                {
                    "network": name,
                    "batch": best["batch"],
                    "gpu_frames_per_s": best["frames_per_s"],
                    "camera_fps": fps,
                    "microscopes_per_gpu": microscopes,
                    "pipeline_instances": math.ceil(microscopes * fps * per_frame_s),
                }
            )
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp16")
    p.add_argument("--size", type=int, default=2048, help="frame side, px")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rates", type=float, nargs="+", default=[30.0, 5.0], help="camera frames/s")
    p.add_argument("--out", type=Path, default=Path("gpu_sizing.json"))
    args = p.parse_args()
    if min(args.batches) < 1 or args.repeats < 1 or not 32 <= args.size <= 4096:
        p.error("batches and repeats must be >= 1 and --size between 32 and 4096 px")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here; run with --device cpu (and a small --size) to check the script")
    rows = network_rows(args, device)
    cpu = cpu_work_per_frame(args, device)
    table = sizing(rows, cpu, args.rates)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    args.out.write_text(json.dumps({"device": name, "networks": rows, "cpu": cpu, "sizing": table}, indent=2))
    print(
        f"{name}, {args.dtype}, {args.size}² frames; CPU per frame: prepare {cpu['prepare_s'] * 1e3:.0f} ms, "
        f"post-processing {cpu['post_s'] * 1e3:.0f} ms ({cpu['loops']} loops)"
    )
    print("| network | batch | latency ms | frames/s |")
    print("|---|---|---|---|")
    for r in rows:
        figures = (
            f"{r['latency_s'] * 1e3:.1f} | {r['frames_per_s']:.1f}"
            if "frames_per_s" in r
            else f"failed: {r['error']}"
        )
        print(f"| {r['network']} | {r['batch']} | {figures} |")
    print("| network | best batch | camera fps | microscopes per GPU | pipeline instances (CPU cores) |")
    print("|---|---|---|---|---|")
    for t in table:
        if "error" in t:
            print(f"| {t['network']} | {t['error']} | | | |")
        else:
            print(
                f"| {t['network']} | {t['batch']} | {t['camera_fps']:g} | {t['microscopes_per_gpu']} "
                f"| {t['pipeline_instances']} |"
            )


if __name__ == "__main__":
    main()
