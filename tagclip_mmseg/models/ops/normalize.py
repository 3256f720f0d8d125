"""Min-max normalisation, the one rescaling every stage of the pipeline uses.

TagCLIP normalises DMAR score maps and CWR regions, CLIP-ES normalises
Grad-CAMs and affinity-refined maps; all of them "subtract the min, then divide
by the max of what is left", differing only in whether a small epsilon is added
to the divisor. Keeping a single routine keeps those variants identical
everywhere (spec sections 4.3, 4.5, 6.2 and 6.3).
"""
from typing import Sequence, Union

import torch
from torch import Tensor

__all__ = ['minmax_normalize', 'compute_dtype']


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype to compute in: the inputs' common dtype, at least float32.

    Half-precision inputs (fp16/bf16, e.g. from the fp16 CAM model) are
    promoted so that sums over hundreds of patches and the uint8 quantisation
    behave like the fp32 reference; float64 stays float64.
    """
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def minmax_normalize(x: Tensor, dim: Union[int, Sequence[int]] = -1, eps: float = 0.0) -> Tensor:
    """Rescale ``x`` to [0, 1] along ``dim``: ``(x - min) / (max(x - min) + eps)``.

    With ``eps == 0`` (DMAR, CWR) a constant slice has nothing to divide by;
    it maps to all zeros instead of the reference's 0/0 = NaN. NaN would
    anyway quantise to 0 in the reference's uint8 conversion (x86 behaviour),
    so both give an empty box downstream. With ``eps > 0`` (CLIP-ES uses
    1e-7 for CAMs) the maximum ends slightly below 1, as in the reference.

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
