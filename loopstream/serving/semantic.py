"""The semantic family's merge step: tile logits -> stitched probabilities -> loop ellipses.

The probability maps of all tiles are stitched (seam in the middle of each overlap) before
instances are formed, so a loop on a tile border is found once and whole; loop cores seed a
watershed of the foreground so touching loops stay two loops. The whole frame is only ever
thresholded; probabilities are computed on the crops of the loops (``Mosaic``,
``loops_from_logits``), which keeps a 2048² frame's post-processing within a few tens of ms.

Examples
--------
>>> import numpy as np
>>> from loopstream.serving.frames import prepare_frame
>>> prepared = prepare_frame(np.zeros((300, 400), np.uint16), tile_px=256, overlap_px=32)
>>> from loopstream.serving.spec import PipelineSpec
>>> config = PipelineSpec(tile_px=256, overlap_px=32)
>>> logits = list(np.full((4, 2, 256, 256), -5.0, np.float32))
>>> detections, masks = finish_frame(logits, prepared, config, with_masks=True)
>>> len(detections), len(masks)
(0, 0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from loopstream.core.ellipses import loops_from_logits
from loopstream.core.imaging import Mosaic
from loopstream.core.masks import MaskCrop
from loopstream.serving.frames import PreparedFrame

if TYPE_CHECKING:
    from loopstream.serving.spec import PipelineSpec


def finish_frame(
    logits: list[np.ndarray], prepared: PreparedFrame, config: PipelineSpec, with_masks: bool = False
) -> tuple[pd.DataFrame, list[MaskCrop]]:
    """Detections (``loopstream.core.detections.LOOP_COLUMNS``) and, when asked, their masks, from
    the logits [2, tile, tile] of each tile."""
    mosaic = Mosaic(logits, prepared.tiles, prepared.shape)
    return loops_from_logits(mosaic, config.threshold, config.min_area_px, with_masks)
