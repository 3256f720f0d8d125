"""Min-max normalisation, the one rescaling every stage of the pipeline uses.

TagCLIP's DMAR maps and CWR regions and CLIP-ES's Grad-CAMs and refined maps
differ only in the epsilon added to the divisor (docs/method.md, "DMAR part 2:
first refinement and the class-wise box mask").
"""
from typing import Sequence, Union

import torch
from torch import Tensor

__all__ = ['minmax_normalize', 'compute_dtype']


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype to compute in: the inputs' common dtype, at least float32.

    Half-precision inputs are promoted, so sums behave like the fp32 reference.
    """
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def minmax_normalize(x: Tensor, dim: Union[int, Sequence[int]] = -1, eps: float = 0.0) -> Tensor:
    """Rescale ``x`` to [0, 1] along ``dim``: ``(x - min) / (max(x - min) + eps)``.

    A constant slice maps to zeros (the reference's NaN quantises to 0 too).

    Args:
        x (Tensor): Values of any floating dtype.
        dim (int | Sequence[int]): Dimension(s) normalised jointly.
        eps (float): Added to the divisor.

    Returns:
        Tensor: Same shape as ``x``, dtype :func:`compute_dtype` of ``x``
        (float32 for half inputs).
    """
    if eps < 0:
        raise ValueError(f'eps must be >= 0, got {eps}')
    dims = (dim, ) if isinstance(dim, int) else tuple(dim)
    xf = x.to(compute_dtype(x))
    shifted = xf - xf.amin(dim=dims, keepdim=True)
    denom = shifted.amax(dim=dims, keepdim=True) + eps
    # A zero divisor only occurs for a constant slice, where the numerator is
    # zero too: dividing by the smallest normal number yields exact zeros.
    return shifted / denom.clamp_min(torch.finfo(denom.dtype).tiny)
