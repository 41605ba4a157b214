"""Named model architectures: one place that says what "unet_r18" is, for training and export.

Every semantic model maps a standardised grey frame [N, 1, H, W] to two logit maps [N, 2, H, W]:
channel 0 = loop foreground, channel 1 = loop core (see ``loopstream.models.targets``). Encoders
are built with random weights: nothing can be downloaded here, so all weights are trained by us.

Examples
--------
>>> import torch
>>> model = build_model("unet_r18").eval()
>>> with torch.no_grad():
...     tuple(model(torch.zeros(1, 1, 64, 96)).shape)
(1, 2, 64, 96)
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

N_CLASSES = 2  # foreground, core
SIZE_MULTIPLE_PX = 32  # U-Nets below need H and W divisible by 2**5 (depth-4 encoders by 16)

# Light U-Nets for CPU serving. Depth 4 skips ResNet's last stage: loops are 10-70 px across, so
# a 1/16 receptive-field stride already sees a whole loop and its surroundings, and the model
# stays ~12 MB in fp32 (measured here: ~0.18 s per 512 x 512 tile on 2 threads).
ARCHITECTURES: dict[str, dict] = {
    "unet_r18": dict(
        family="Unet", encoder_name="resnet18", encoder_depth=4, decoder_channels=(64, 32, 16, 16)
    ),
    "unet_effb0": dict(
        family="Unet", encoder_name="efficientnet-b0", encoder_depth=4, decoder_channels=(64, 32, 16, 16)
    ),
    "unetpp_r18": dict(
        family="UnetPlusPlus", encoder_name="resnet18", encoder_depth=4, decoder_channels=(64, 32, 16, 16)
    ),
    "segformer_mitb0": dict(family="Segformer", encoder_name="mit_b0"),
}


def build_model(name: str) -> nn.Module:
    """A randomly initialised model of architecture ``name`` (one grey input channel, 2 outputs)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    spec = dict(ARCHITECTURES[name])
    family = getattr(smp, spec.pop("family"))
    model = family(encoder_weights=None, in_channels=1, classes=N_CLASSES, **spec)
    # A depth-d ResNet encoder never runs its stages beyond d - 1, but smp keeps their weights
    # (ResNet-18's last stage is 3/4 of its parameters): drop them from model and checkpoints.
    for stage in range(spec.get("encoder_depth", 5), 5):
        if hasattr(model.encoder, f"layer{stage}"):
            setattr(model.encoder, f"layer{stage}", nn.Identity())
    return model
