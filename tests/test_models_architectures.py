"""Every semantic architecture the training CLI offers builds and maps a tile to two logit maps."""

from __future__ import annotations

import pytest
import torch

from loopstream.models.architectures import ARCHITECTURES, build_model


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_maps_a_tile_to_foreground_and_core_logits(name: str) -> None:
    model = build_model(name).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 128, 160))
    assert logits.shape == (2, 2, 128, 160)
    assert torch.isfinite(logits).all()
