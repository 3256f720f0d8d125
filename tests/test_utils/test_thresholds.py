
"""Thresholds of the tag scores (``utils/thresholds.py``)."""
import torch


def test_relative_threshold_tags_nothing_on_equal_or_nan_scores():
    from tagclip_mmseg.utils import relative_threshold_mask
    scores = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.3, 0.3], [float('nan')] * 3,
                           [0.1, 0.7, 0.2]])
    mask = relative_threshold_mask(scores, 0.35)
    assert mask.tolist() == [[False] * 3, [False] * 3, [False] * 3, [False, True, False]]
