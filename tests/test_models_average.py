"""Weight averaging of checkpoints (``python -m loopstream.models.average``), as used for the
default instance model v3."""

from __future__ import annotations

import pytest
import torch

from loopstream.models.average import main
from loopstream.models.export_instance import load_instance_checkpoint
from loopstream.models.maskrcnn import build_maskrcnn


def _checkpoint(path, arch: str, seed: int):
    torch.manual_seed(seed)
    torch.save({"arch": arch, "model": build_maskrcnn(arch).state_dict(), "step": seed}, path)
    return path


def test_the_average_of_two_checkpoints_loads_as_their_mean(tmp_path):
    a = _checkpoint(tmp_path / "a.pt", "maskrcnn_r18", 1)
    b = _checkpoint(tmp_path / "b.pt", "maskrcnn_r18", 2)
    main([str(a), str(b), "--out", str(tmp_path / "mean.pt")])
    mean = load_instance_checkpoint(tmp_path / "mean.pt").state_dict()
    wa, wb = (torch.load(p, weights_only=False)["model"] for p in (a, b))
    floats = [k for k, v in wa.items() if v.is_floating_point() and not torch.equal(v, wb[k])]
    assert len(floats) >= 30  # the two random models really differ (convs, heads)
    for key in floats:
        torch.testing.assert_close(mean[key], (wa[key] + wb[key]) / 2)


def test_checkpoints_of_different_architectures_are_refused(tmp_path):
    a = _checkpoint(tmp_path / "a.pt", "maskrcnn_r18", 1)
    b = _checkpoint(tmp_path / "b.pt", "maskrcnn_r50", 1)
    with pytest.raises(ValueError, match="average checkpoints of one architecture"):
        main([str(a), str(b), "--out", str(tmp_path / "mean.pt")])
