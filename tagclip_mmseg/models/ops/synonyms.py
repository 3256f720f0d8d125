"""Class probabilities from text rows (docs/method.md, "Synonyms")."""
from typing import Optional

from torch import Tensor

__all__ = ['class_softmax']


def class_softmax(logits: Tensor,
                  row_classes: Optional[Tensor] = None,
                  num_classes: Optional[int] = None,
                  support: Optional[Tensor] = None) -> Tensor:
    """Softmax over text rows, then each class's max over its rows.

    Args:
        logits (Tensor): (..., R) logits of the text rows.
        row_classes (Tensor, optional): (R,) class of every row, or None.
        num_classes (int, optional): Number of classes C.
        support (Tensor, optional): (..., C) bool: classes in the softmax.

    Returns:
        Tensor: (..., C) probabilities.
    """
    if support is not None:
        row_support = support if row_classes is None else support[..., row_classes]
        logits = logits.masked_fill(~row_support, float('-inf'))
    probs = logits.softmax(dim=-1)
    if row_classes is None:
        return probs
    index = row_classes.expand_as(probs)
    out = probs.new_zeros(*probs.shape[:-1], int(num_classes))
    return out.scatter_reduce(-1, index, probs, reduce='amax', include_self=False)
