"""Batched crop-and-resize that matches ``F.interpolate`` on each crop."""
from typing import Tuple

import torch
from torch import Tensor

__all__ = ['bilinear_resize_matrices', 'nearest_resize_indices', 'crop_resize_bilinear',
           'crop_resize_nearest']


def bilinear_resize_matrices(start: Tensor, length: Tensor, full: int, out: int) -> Tensor:
    """Rows of a 1-D bilinear resize of ``[start, start + length)`` to ``out``.

    Args:
        start (Tensor): (K,) first pixel of each crop.
        length (Tensor): (K,) crop lengths (>= 1).
        full (int): Length of the full image axis.
        out (int): Output length.

    Returns:
        Tensor: (K, out, full) float32 interpolation matrices.
    """
    K = start.shape[0]
    dev = start.device
    n = length.to(torch.float32)[:, None]
    i = torch.arange(out, device=dev, dtype=torch.float32)[None]
    scale = n / out
    src = ((i + 0.5) * scale - 0.5).clamp_min(0)
    i0 = src.floor().long()
    i0 = torch.minimum(i0, length[:, None] - 1)
    i1 = torch.minimum(i0 + 1, length[:, None] - 1)
    l1 = (src - i0.float()).clamp(0, 1)
    l0 = 1 - l1
    mat = torch.zeros(K, out, full, device=dev, dtype=torch.float32)
    mat.scatter_add_(2, (start[:, None] + i0)[..., None], l0[..., None])
    mat.scatter_add_(2, (start[:, None] + i1)[..., None], l1[..., None])
    return mat


def nearest_resize_indices(start: Tensor, length: Tensor, out: int) -> Tensor:
    """(K, out) source indices of a nearest resize; see :func:`bilinear_resize_matrices`."""
    dev = start.device
    scale = length.to(torch.float32)[:, None] / out
    i = torch.arange(out, device=dev, dtype=torch.float32)[None]
    idx = torch.minimum((i * scale).floor().long(), length[:, None] - 1)
    return start[:, None] + idx


def crop_resize_bilinear(images: Tensor, image_index: Tensor, boxes: Tensor,
                         size: Tuple[int, int]) -> Tensor:
    """Crop boxes out of images and resize each bilinearly to ``size``.

    Args:
        images (Tensor): (B, C, H, W) images.
        image_index (Tensor): (K,) which image each box belongs to.
        boxes (Tensor): (K, 4) integer ``x1, y1, x2, y2``, exclusive ends.
        size (tuple[int, int]): Output (height, width).

    Returns:
        Tensor: (K, C, size[0], size[1]) in ``images``' dtype.
    """
    H, W = images.shape[-2:]
    boxes = boxes.long()
    ry = bilinear_resize_matrices(boxes[:, 1], boxes[:, 3] - boxes[:, 1], H, size[0])
    rx = bilinear_resize_matrices(boxes[:, 0], boxes[:, 2] - boxes[:, 0], W, size[1])
    src = images[image_index].float()
    out = torch.matmul(ry[:, None], src)  # (K, C, oh, W)
    out = torch.matmul(out, rx[:, None].transpose(-1, -2))  # (K, C, oh, ow)
    return out.to(images.dtype)


def crop_resize_nearest(maps: Tensor, map_index: Tensor, boxes: Tensor,
                        size: Tuple[int, int]) -> Tensor:
    """:func:`crop_resize_bilinear` for (B, H, W) maps, with a nearest resize."""
    boxes = boxes.long()
    iy = nearest_resize_indices(boxes[:, 1], boxes[:, 3] - boxes[:, 1], size[0])
    ix = nearest_resize_indices(boxes[:, 0], boxes[:, 2] - boxes[:, 0], size[1])
    sel = maps[map_index]  # (K, H, W)
    rows = torch.gather(sel, 1, iy[:, :, None].expand(-1, -1, sel.shape[-1]))
    return torch.gather(rows, 2, ix[:, None, :].expand(-1, size[0], -1))
