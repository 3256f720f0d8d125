"""Box masks from score maps (docs/implementation.md, "Box masks on the device")."""
from typing import NamedTuple, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'RegionBox', 'quantize_like_reference', 'binarize_like_reference', 'connected_components',
    'component_boxes_union', 'boxes_from_scores', 'region_bbox'
]


class RegionBox(NamedTuple):
    """A tight bounding box per map (int64, exclusive ends, zero if invalid)."""
    x1: Tensor
    y1: Tensor
    x2: Tensor
    y2: Tensor
    valid: Tensor


def _check_maps(maps: Tensor, name: str) -> None:
    if maps.dim() < 2 or maps.shape[-2] == 0 or maps.shape[-1] == 0:
        raise ValueError(f'{name} must have shape (..., H, W) with H, W >= 1, '
                         f'got {tuple(maps.shape)}')


def quantize_like_reference(maps: Tensor) -> Tensor:
    """The reference's ``(v * 255).astype(np.uint8)`` on maps in [0, 1].

    Args:
        maps (Tensor): Floating maps, any shape, values in [0, 1].

    Returns:
        Tensor: uint8 tensor of the same shape.
    """
    return _quantize(maps).to(torch.uint8)


def _quantize(maps: Tensor) -> Tensor:
    if not maps.is_floating_point():
        raise TypeError(f'expected floating-point score maps, got {maps.dtype}')
    v = torch.nan_to_num(maps.to(torch.float32), nan=0.0)
    return torch.floor(v * 255.0).clamp_(0.0, 255.0)


def binarize_like_reference(maps: Tensor,
                            thresh: Union[float, Tensor],
                            relative_to_max: bool = False) -> Tensor:
    """Foreground mask of score maps, exactly as the reference computes it.

    Args:
        maps (Tensor): Normalised maps (..., H, W), values in [0, 1].
        thresh (float | Tensor): Scalar, or one threshold per map.
        relative_to_max (bool): Scale ``thresh`` by the map's max, not 255.

    Returns:
        Tensor: Bool mask (..., H, W).
    """
    _check_maps(maps, 'maps')
    q = _quantize(maps)
    if isinstance(thresh, Tensor):
        if not thresh.is_floating_point():
            raise TypeError(f'thresh must be a floating tensor, got {thresh.dtype}')
        t = thresh.to(device=maps.device,
                      dtype=torch.promote_types(thresh.dtype, torch.float32))
    else:
        t = torch.tensor(float(thresh), dtype=torch.float64, device=maps.device)
    scale = q.amax(dim=(-2, -1)).to(t.dtype) if relative_to_max else 255.0
    level = torch.trunc(t * scale)
    return q > level[..., None, None]


def _box_min3(labels: Tensor, background: int) -> Tensor:
    p = F.pad(labels, (1, 1), value=background)
    rows = torch.minimum(torch.minimum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    p = F.pad(rows, (0, 0, 1, 1), value=background)
    return torch.minimum(torch.minimum(p[:, :-2], p[:, 1:-1]), p[:, 2:])


def _run_starts(fg: Tensor, dim: int) -> Tensor:
    prev = torch.zeros_like(fg)
    n = fg.shape[dim]
    prev.narrow(dim, 1, n - 1).copy_(fg.narrow(dim, 0, n - 1))
    return fg & ~prev


def _run_min(labels: Tensor, fg: Tensor, dim: int, background: int) -> Tensor:
    """Minimum label over each maximal foreground run along ``dim``."""

    def forward(lab: Tensor, mask: Tensor) -> Tensor:
        offset = _run_starts(mask, dim).long().cumsum(dim) * background
        return (lab - offset).cummin(dim).values + offset

    backward = forward(labels.flip(dim), fg.flip(dim)).flip(dim)
    return torch.minimum(forward(labels, fg), backward)


def connected_components(mask: Tensor, connectivity: int = 8) -> Tensor:
    """Label connected foreground blobs of every map in a batch, on its device.

    Args:
        mask (Tensor): Bool tensor (..., H, W).
        connectivity (int): 8 (OpenCV's contour tracing) or 4.

    Returns:
        Tensor: int64 labels (..., H, W), 0 for background.
    """
    _check_maps(mask, 'mask')
    if mask.dtype != torch.bool:
        raise TypeError(f'mask must be a bool tensor, got {mask.dtype}; use mask > 0')
    if connectivity not in (4, 8):
        raise ValueError(f'connectivity must be 4 or 8, got {connectivity}')
    if mask.numel() == 0:
        return torch.zeros(mask.shape, dtype=torch.long, device=mask.device)
    H, W = mask.shape[-2:]
    hw = H * W
    num = mask.numel() // hw
    fg = mask.reshape(num, H, W)
    fg_flat = fg.view(num, hw)
    background = hw + 1  # larger than any label, so minima ignore it
    start = torch.arange(1, hw + 1, device=mask.device).view(1, H, W)
    labels = torch.where(fg, start, background)
    for _ in range(hw + 1):  # each productive iteration lowers some label
        new = labels
        if connectivity == 8:
            new = torch.where(fg, _box_min3(new, background), background)
        new = torch.where(fg, _run_min(new, fg, 2, background), background)
        new = torch.where(fg, _run_min(new, fg, 1, background), background)
        flat = new.view(num, hw)
        for _jump in range(2):
            target = (flat - 1).clamp_(max=hw - 1)
            flat = torch.where(fg_flat, flat.gather(1, target), background)
        new = flat.view(num, H, W)
        if torch.equal(new, labels):
            break
        labels = new
    return torch.where(fg, labels, 0).view(mask.shape)


def component_boxes_union(mask: Tensor, box_clamp: bool = True) -> Tensor:
    """Union of the bounding rectangles of all 8-connected blobs, per map.

    Args:
        mask (Tensor): Bool foreground (..., H, W).
        box_clamp (bool): Clamp right/bottom limits like the reference.

    Returns:
        Tensor: Bool box mask (..., H, W); empty where ``mask`` is empty.
    """
    labels = connected_components(mask, connectivity=8)
    H, W = mask.shape[-2:]
    hw = H * W
    if mask.numel() == 0:
        return torch.zeros_like(mask)
    num = mask.numel() // hw
    flat = labels.view(num, hw)
    slot = torch.where(flat > 0, flat - 1, hw)
    pix = torch.arange(hw, device=mask.device)
    rows = (pix // W).expand(num, hw)
    cols = (pix % W).expand(num, hw)

    def reduce(values: Tensor, init: int, how: str) -> Tensor:
        acc = torch.full((num, hw + 1), init, dtype=torch.long, device=mask.device)
        return acc.scatter_reduce_(1, slot, values, reduce=how)[:, :hw]

    y1, x1 = reduce(rows, H, 'amin'), reduce(cols, W, 'amin')
    y2, x2 = reduce(rows, -1, 'amax') + 1, reduce(cols, -1, 'amax') + 1
    if box_clamp:
        x2 = x2.clamp(max=W - 1)
        y2 = y2.clamp(max=H - 1)
    valid = ((x2 > x1) & (y2 > y1)).int()
    stride = W + 1
    corners = torch.cat([y1 * stride + x1, y1 * stride + x2, y2 * stride + x1, y2 * stride + x2],
                        dim=1)
    weights = torch.cat([valid, -valid, -valid, valid], dim=1)
    diff = torch.zeros((num, (H + 1) * stride), dtype=torch.int32, device=mask.device)
    diff.scatter_add_(1, corners, weights)
    cover = diff.view(num, H + 1, stride).cumsum(1).cumsum(2)[:, :H, :W]
    return (cover > 0).view(mask.shape)


def boxes_from_scores(maps: Tensor,
                      thresh: Union[float, Tensor],
                      relative_to_max: bool = False,
                      box_clamp: bool = True) -> Tensor:
    """Box mask of normalised score maps (binarise, then union of blob boxes).

    Args:
        maps (Tensor): Normalised maps (..., H, W) in [0, 1].
        thresh (float | Tensor): See :func:`binarize_like_reference`.
        relative_to_max (bool): See :func:`binarize_like_reference`.
        box_clamp (bool): See :func:`component_boxes_union`.

    Returns:
        Tensor: Bool box masks (..., H, W).
    """
    fg = binarize_like_reference(maps, thresh, relative_to_max)
    return component_boxes_union(fg, box_clamp)


def region_bbox(mask: Tensor, box_clamp: bool = True) -> RegionBox:
    """Tight bounding box of all foreground pixels of each map (CWR's region).

    Args:
        mask (Tensor): Bool (..., H, W).
        box_clamp (bool): Reproduce the reference clamping.

    Returns:
        RegionBox: Boxes of shape ``mask.shape[:-2]``.
    """
    _check_maps(mask, 'mask')
    if mask.dtype != torch.bool:
        raise TypeError(f'mask must be a bool tensor, got {mask.dtype}; use mask > 0')
    H, W = mask.shape[-2:]
    y1, y2 = _extent(mask.any(dim=-1), H)
    x1, x2 = _extent(mask.any(dim=-2), W)
    if box_clamp:
        x2 = x2.clamp(max=W - 1)
        y2 = y2.clamp(max=H - 1)
    valid = (x2 > x1) & (y2 > y1)
    zero = torch.zeros_like(x1)
    return RegionBox(*(torch.where(valid, c, zero) for c in (x1, y1, x2, y2)), valid)


def _extent(active: Tensor, size: int) -> Tuple[Tensor, Tensor]:
    idx = torch.arange(size, device=active.device)
    first = torch.where(active, idx, size).amin(dim=-1)
    end = torch.where(active, idx + 1, 0).amax(dim=-1)
    return first, end
