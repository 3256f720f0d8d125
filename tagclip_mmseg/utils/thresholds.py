"""TagCLIP's per-image relative threshold, shared by the tagger and the metric."""
from typing import Tuple

import torch

__all__ = ['relative_threshold', 'relative_threshold_mask']


def _bounds(scores: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``(N, 1)`` minimum and maximum of each row."""
    return scores.min(dim=1, keepdim=True).values, scores.max(dim=1, keepdim=True).values


def relative_threshold(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """``t = min + ratio * (max - min)`` of each row of ``(N, M)`` scores.

    Returns:
        The ``(N, 1)`` thresholds.
    """
    low, high = _bounds(scores)
    return low + ratio * (high - low)


def relative_threshold_mask(scores: torch.Tensor,
                            ratio: float = 0.5,
                            fallback_argmax: bool = True) -> torch.Tensor:
    """Binarise scores with TagCLIP's per-image relative threshold.

    Class c tags image i when ``s_ic > min_c s_ic + ratio * (max_c s_ic -
    min_c s_ic)`` (docs/method.md, "Tag decision").

    Args:
        scores: ``(N, C)`` or ``(C,)`` scores.
        ratio: ``r`` in the formula: 0.5 for VOC/COCO, 0.1 for COCO-Stuff.
        fallback_argmax: Tag the arg-max class when nothing passes but that
            class scores above the image's lowest score; all-equal scores get
            no tag.

    Returns:
        A bool tensor shaped like ``scores``.
    """
    squeeze = scores.dim() == 1
    scores = scores.unsqueeze(0) if squeeze else scores
    low, high = _bounds(scores)
    mask = scores > low + ratio * (high - low)
    if fallback_argmax:
        empty = ~mask.any(dim=1) & (high > low)[:, 0]
        top = torch.zeros_like(mask).scatter_(1, scores.argmax(dim=1, keepdim=True), True)
        mask = mask | (top & empty[:, None])
    return mask[0] if squeeze else mask
