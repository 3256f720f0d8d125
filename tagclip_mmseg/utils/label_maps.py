"""Label-space maps and their look-up tables: the one place that builds them.

A label map sends each old label to a new one (e.g. COCO-Stuff 182 ids ->
171); every user goes through :func:`label_lut`, so -1 means the same
everywhere.
"""
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .class_names import COCOSTUFF_171_TO_27, COCOSTUFF_182_TO_27, COCOSTUFF_182_TO_171

__all__ = ['LabelMap', 'LABEL_INDEX_MAPS', 'resolve_index_map', 'label_lut', 'apply_label_lut']

#: A label map: a name from :data:`LABEL_INDEX_MAPS`, the new label per old
#: label (a sequence, array or tensor), or ``{old: new}``.
LabelMap = Union[str, Sequence[int], Mapping[int, int], np.ndarray, torch.Tensor]

#: Named index maps that configs can pass as strings (a config cannot import
#: Python constants): file index -> dataset index, -1 for "must not occur".
LABEL_INDEX_MAPS: Dict[str, Tuple[int, ...]] = {
    'cocostuff182_to_171': COCOSTUFF_182_TO_171,
    'cocostuff182_to_27': COCOSTUFF_182_TO_27,
    'cocostuff171_to_27': COCOSTUFF_171_TO_27,
}


def resolve_index_map(index_map: Union[None, str, Sequence[int]]) -> Optional[Tuple[int, ...]]:
    """An index map given as a name from :data:`LABEL_INDEX_MAPS` or a sequence."""
    if index_map is None or not isinstance(index_map, str):
        return None if index_map is None else tuple(int(i) for i in index_map)
    if index_map not in LABEL_INDEX_MAPS:
        raise ValueError(f'unknown index map {index_map!r}; known: {sorted(LABEL_INDEX_MAPS)} '
                         'or pass the list itself')
    return LABEL_INDEX_MAPS[index_map]


def label_lut(label_map: LabelMap, size: int = 0, fill: int = -1) -> torch.Tensor:
    """A look-up table ``lut[old] = new`` from a label map.

    Args:
        label_map: A name from :data:`LABEL_INDEX_MAPS` (e.g.
            ``'cocostuff171_to_27'``), a sequence/array/tensor whose i-th
            entry is the new label of old label i, or a dict ``{old: new}``.
        size: Minimum table length (256 covers every uint8 mask value); the
            table is longer when the map covers more labels.
        fill: The label of old labels the map does not cover and of negative
            entries ("must not occur"): -1 for "none", or an ``ignore_index``.

    Returns:
        torch.Tensor: A 1-D LongTensor (``.numpy()`` for NumPy look-ups).

    Raises:
        ValueError: For an empty map, or an unknown name.
    """
    if isinstance(label_map, str):
        label_map = resolve_index_map(label_map)
    if isinstance(label_map, Mapping):
        pairs = [(int(old), int(new)) for old, new in label_map.items()]
        length = max((old + 1 for old, _ in pairs), default=0)
        lut = torch.full((max(length, size), ), fill, dtype=torch.long)
        for old, new in pairs:
            lut[old] = new
    else:
        table = torch.as_tensor(np.asarray(label_map), dtype=torch.long).flatten()
        lut = torch.full((max(table.numel(), size), ), fill, dtype=torch.long)
        lut[:table.numel()] = table
    if lut.numel() == 0:
        raise ValueError('label_map is empty')
    return lut.masked_fill(lut < 0, fill)


def apply_label_lut(labels: torch.Tensor, lut: torch.Tensor,
                    ignore_index: int = 255) -> torch.Tensor:
    """``lut[labels]``, with labels outside the table mapped to ``ignore_index``."""
    labels = labels.long()
    lut = lut.to(labels.device)
    inside = (labels >= 0) & (labels < lut.numel())
    mapped = lut[labels.clamp(0, lut.numel() - 1)]
    return torch.where(inside, mapped, torch.full_like(mapped, ignore_index))
