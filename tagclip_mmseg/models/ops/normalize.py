"""Min-max normalisation, the one rescaling every stage of the pipeline uses.

TagCLIP normalises DMAR score maps and CWR regions, CLIP-ES normalises
Grad-CAMs and affinity-refined maps; all of them "subtract the min, then divide
by the max of what is left", differing only in whether a small epsilon is added
to the divisor. Keeping a single routine keeps those variants identical
everywhere (docs/method.md §4.3, 4.5, 6.2 and 6.3).
"""
from typing import Sequence, Union

import torch
from torch import Tensor

__all__ = ['minmax_normalize', 'normalize_grad_cam', 'compute_dtype', 'GRAD_CAM_EPS']

#: Epsilon of the reference Grad-CAM rescaling ``(x - min) / (max + eps)``.
GRAD_CAM_EPS = 1e-7


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


def normalize_grad_cam(cam: Tensor, grad_cam_double_norm: bool, dim: int = -1) -> Tensor:
    """Rescale Grad-CAMs the way CLIP-ES does: ``(x - min) / (max + 1e-7)``.

    The reference rescales once per target layer and once more after the
    mean over layers (a single layer here, so the mean is the identity). The
    two passes are *not* idempotent: for a weak tag whose raw CAM spans only
    ~1e-7, the first pass leaves the maximum well below 1 (about 0.78 for a
    3e-7 range) and the second lifts it to ~1, which moves the CAM's
    uint8-quantised ``ratio * max`` box. ``grad_cam_double_norm=True`` (the
    ``Quirks`` field of that name) reproduces that; ``False`` rescales once,
    because the CAM's scale cancels downstream (the box is relative to the
    max and the affinity-refined map is min-max normalised again), so the
    second pass only re-applies the epsilon. See docs/modes.md.

    Args:
        cam (Tensor): Non-negative raw CAMs, any shape.
        grad_cam_double_norm (bool): Apply the rescaling a second time
            (reference quirk 12).
        dim (int): Dimension over which min and max are taken.

    Returns:
        Tensor: Rescaled CAMs in [0, 1), float32 (float64 for float64).
    """
    out = minmax_normalize(cam, dim=dim, eps=GRAD_CAM_EPS)
    if grad_cam_double_norm:
        out = minmax_normalize(out, dim=dim, eps=GRAD_CAM_EPS)
    return out
