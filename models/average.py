"""Average the weights of checkpoints of one model (``python -m loopstream.models.average``).

Why: fine-tuning on a handful of images wanders between solutions that fit them; the mean of the
weights of points along one run (stochastic weight averaging, Izmailov et al., UAI 2018) can
generalise better than either point. The default instance model v3 is the mean of v2 and of v2
fine-tuned 70 min more (models/MODEL_CARD.md).

Floating tensors are averaged in float32, BatchNorm statistics included: right when they were
frozen during the fine-tune (``train_instance --init`` keeps them), otherwise they must be
recomputed. Other tensors (batch counters) are taken from the first checkpoint. The output holds
the first checkpoint's rebuild header (``training_run.checkpoint_header``) and the mean weights,
ready for ``export`` / ``export_instance``.

Example::

    python -m loopstream.models.average models/checkpoints/loops_instance_v2.pt \\
        /tmp/runs/ft_v3/last.pt --out /tmp/avg/avg.pt
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from loopstream.models.training_run import checkpoint_header


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the floating tensors of ``states`` (same keys and shapes), as float32.

    >>> a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0], dtype=torch.float16)}
    >>> average_state_dicts([a, b])["w"].tolist()
    [2.0, 4.0]
    """
    first = states[0]
    for i, state in enumerate(states[1:], start=2):
        if state.keys() != first.keys():
            odd = sorted(state.keys() ^ first.keys())[0]
            raise ValueError(f"checkpoint {i} and checkpoint 1 differ in tensor {odd!r}: average one model's")
        for key, value in state.items():
            if value.shape != first[key].shape:
                raise ValueError(
                    f"tensor {key!r} is {tuple(value.shape)} in checkpoint {i} but "
                    f"{tuple(first[key].shape)} in checkpoint 1: average checkpoints of one architecture"
                )
    return {
        key: torch.stack([s[key].float() for s in states]).mean(0) if value.is_floating_point() else value
        for key, value in first.items()
    }


def average_checkpoints(paths: Sequence[Path], out: Path) -> Path:
    """Write the mean of the checkpoints at ``paths`` (one architecture) to ``out``."""
    header = checkpoint_header(paths[0])
    states = []
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("arch") != header.get("arch"):
            raise ValueError(
                f"{path} is a {state.get('arch')!r} checkpoint and {paths[0]} a {header.get('arch')!r} "
                "one: average checkpoints of one architecture"
            )
        states.append(state["model"])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**header, "model": average_state_dicts(states)}, out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "checkpoints", type=Path, nargs="+", help="train / train_instance checkpoints of one model"
    )
    p.add_argument("--out", type=Path, required=True, help="where to write the averaged checkpoint")
    args = p.parse_args(argv)
    if len(args.checkpoints) < 2:
        p.error("give at least two checkpoints to average")
    print(f"wrote {average_checkpoints(args.checkpoints, args.out)}")


if __name__ == "__main__":
    main()
