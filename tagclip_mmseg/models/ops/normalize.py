"""CLIP-ES's Grad-CAM rescaling."""
from torch import Tensor

from ...utils.normalize import minmax_normalize

__all__ = ['normalize_grad_cam', 'GRAD_CAM_EPS']

GRAD_CAM_EPS = 1e-7


def normalize_grad_cam(cam: Tensor, grad_cam_double_norm: bool, dim: int = -1) -> Tensor:
    """Rescale Grad-CAMs the way CLIP-ES does: ``(x - min) / (max + 1e-7)``.

    Args:
        cam (Tensor): Non-negative raw CAMs, any shape.
        grad_cam_double_norm (bool): Apply the rescaling a second time.
        dim (int): Dimension over which min and max are taken.

    Returns:
        Tensor: Rescaled CAMs in [0, 1).
    """
    out = minmax_normalize(cam, dim=dim, eps=GRAD_CAM_EPS)
    if grad_cam_double_norm:
        out = minmax_normalize(out, dim=dim, eps=GRAD_CAM_EPS)
    return out
