"""The semantic family's merge step: tile logits -> stitched probabilities -> loop ellipses.

The probability maps of all tiles are stitched (seam in the middle of each overlap) before
instances are formed, so a loop on a tile border is found once and whole; loop cores seed a
watershed of the foreground so touching loops stay two loops.

Examples
--------
>>> import numpy as np
>>> from loopstream.serving.frames import prepare_frame
>>> prepared = prepare_frame(np.zeros((300, 400), np.uint16), tile_px=256, overlap_px=32)
>>> from loopstream.serving.spec import PipelineSpec
>>> config = PipelineSpec(tile_px=256, overlap_px=32)
>>> logits = np.full((4, 2, 256, 256), -5.0, np.float32)
>>> detections, masks = finish_frame(logits, prepared, config, with_masks=True)
>>> len(detections), len(masks)
(0, 0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from loopstream.core.ellipses import detections_from_labels, labels_from_probability, mask_crops
from loopstream.core.imaging import stitch
from loopstream.core.masks import MaskCrop
from loopstream.serving.frames import PreparedFrame

if TYPE_CHECKING:
    from loopstream.serving.spec import PipelineSpec


def finish_frame(
    logits: np.ndarray, prepared: PreparedFrame, config: PipelineSpec, with_masks: bool = False
) -> tuple[pd.DataFrame, list[MaskCrop]]:
    """Detections (``loopstream.core.detections.LOOP_COLUMNS``) and, when asked, their masks."""
    probability = 1.0 / (1.0 + np.exp(-stitch(logits, prepared.tiles, prepared.shape)))
    labels = labels_from_probability(
        probability[0], probability[1], threshold=config.threshold, min_area_px=config.min_area_px
    )
    return detections_from_labels(labels, probability[0]), mask_crops(labels) if with_masks else []
