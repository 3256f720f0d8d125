"""Box masks from score maps, batched on the device.

TagCLIP (DMAR, docs/method.md §4.3) and CLIP-ES (CAA, docs/method.md §6.3)
both turn a score map into a "box mask": quantise the map to uint8, threshold it, find every connected
blob (OpenCV ``findContours``) and paint the union of the blobs' bounding
rectangles. The reference does this per class on the CPU with OpenCV, one
GPU->CPU copy per class. Here the same result is computed for a whole
``(..., H, W)`` stack at once:

* :func:`binarize_like_reference` reproduces the uint8 quantisation and
  OpenCV's ``THRESH_BINARY`` rule;
* :func:`connected_components` labels 8-connected blobs by min-label
  propagation (3x3 minimum, segmented ``cummin`` along rows and columns,
  pointer jumping);
* :func:`component_boxes_union` reduces each blob's extent with
  ``scatter_reduce`` and paints all rectangles with a 2-D difference array and
  two cumulative sums.

Why the union over *all* components equals OpenCV's union over *external*
contours: a blob nested in another blob's hole lies inside the outer blob's
bounding rectangle, so it adds nothing to the union. ``findContours`` traces
foreground 8-connected, which is why the labelling uses 8-connectivity.

The reference clamps each rectangle's exclusive right/bottom limit to
``size - 1`` (docs/method.md §12, quirk 2); ``box_clamp=True`` reproduces it
(the ``box_clamp`` field of :class:`~tagclip_mmseg.utils.Quirks`, docs/modes.md).
"""
from typing import NamedTuple, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'RegionBox', 'quantize_like_reference', 'binarize_like_reference', 'connected_components',
    'component_boxes_union', 'boxes_from_scores', 'region_bbox'
]


class RegionBox(NamedTuple):
    """A tight bounding box per map, in grid units with exclusive ends.

    Every field has the batch shape of the masks it was computed from.
    ``x1``/``y1``/``x2``/``y2`` are int64 and all zero where ``valid`` is
    False (empty mask, or a box that clamping made zero-width/height).
    """
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

    The product is taken in float32 (the reference's numpy dtype) and
    truncated. NaN becomes 0, which is what the cast gives on x86; values
    outside [0, 1] saturate to 0/255 (numpy would wrap; such inputs are a
    caller bug, normalise first).

    Args:
        maps (Tensor): Floating maps, any shape, values in [0, 1].

    Returns:
        Tensor: uint8 tensor of the same shape.
    """
    return _quantize(maps).to(torch.uint8)


def _quantize(maps: Tensor) -> Tensor:
    """:func:`quantize_like_reference` kept in float32 for comparisons."""
    if not maps.is_floating_point():
        raise TypeError(f'expected floating-point score maps, got {maps.dtype}')
    v = torch.nan_to_num(maps.to(torch.float32), nan=0.0)
    return torch.floor(v * 255.0).clamp_(0.0, 255.0)


def binarize_like_reference(maps: Tensor,
                            thresh: Union[float, Tensor],
                            relative_to_max: bool = False) -> Tensor:
    """Foreground mask of score maps, exactly as the reference computes it.

    With ``q = floor(255 * v)`` the uint8 map, a pixel is foreground when
    ``q > level`` (OpenCV ``THRESH_BINARY``), where

    * ``relative_to_max=False`` (DMAR, docs/method.md §4.3 step 2):
      ``level = int(thresh * 255)``; ``thresh`` is usually the per-map mean of
      the normalised map.
    * ``relative_to_max=True`` (CAA, docs/method.md §6.3 step 5.1):
      ``level = int(thresh * max(q))``, the ratio (0.4 VOC, 0.7 COCO) applied
      to the maximum of the *quantised* map. CLIP-ES CAMs are divided by
      ``max + 1e-7``, so ``max(q)`` is usually 254, not 255.

    ``int`` truncates, hence ``torch.trunc``. The product is computed in the
    dtype the reference uses: float64 for a Python-float ``thresh`` (Python
    float times a numpy uint8/float), the tensor's own dtype (at least
    float32) for a tensor ``thresh`` (numpy float32 times 255 stays float32).

    Args:
        maps (Tensor): Normalised maps (..., H, W), values in [0, 1], any
            floating dtype.
        thresh (float | Tensor): Scalar, or a floating tensor broadcastable
            to ``maps.shape[:-2]`` (one threshold per map).
        relative_to_max (bool): Scale ``thresh`` by the quantised map's max
            instead of 255.

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
    """Minimum over each pixel's closed 3x3 neighbourhood of (M, H, W) labels
    (separable: a 1x3 then a 3x1 minimum, out-of-image counts as background)."""
    p = F.pad(labels, (1, 1), value=background)
    rows = torch.minimum(torch.minimum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    p = F.pad(rows, (0, 0, 1, 1), value=background)
    return torch.minimum(torch.minimum(p[:, :-2], p[:, 1:-1]), p[:, 2:])


def _run_starts(fg: Tensor, dim: int) -> Tensor:
    """Pixels that begin a run of foreground along ``dim``."""
    prev = torch.zeros_like(fg)
    n = fg.shape[dim]
    prev.narrow(dim, 1, n - 1).copy_(fg.narrow(dim, 0, n - 1))
    return fg & ~prev


def _run_min(labels: Tensor, fg: Tensor, dim: int, background: int) -> Tensor:
    """Minimum label over each maximal foreground run along ``dim``.

    A segmented scan through plain ``cummin``: subtracting ``run_id *
    background`` makes every key of a later run smaller than all keys of the
    earlier runs, so the running minimum restarts at each run. Done forwards
    and backwards, this spreads a label along a whole straight run in one
    step instead of one pixel per iteration.
    """

    def forward(lab: Tensor, mask: Tensor) -> Tensor:
        offset = _run_starts(mask, dim).long().cumsum(dim) * background
        return (lab - offset).cummin(dim).values + offset

    backward = forward(labels.flip(dim), fg.flip(dim)).flip(dim)
    return torch.minimum(forward(labels, fg), backward)


def connected_components(mask: Tensor, connectivity: int = 8) -> Tensor:
    """Label connected foreground blobs of every map in a batch, on its device.

    Each foreground pixel starts with its own label (1 + raster index) and
    labels are lowered until every blob carries its minimum, with no loop over
    maps or blobs. One iteration takes

    * the 3x3 neighbourhood minimum (8-connectivity only: it carries labels
      across diagonal contacts),
    * the minimum over each horizontal, then each vertical foreground run (a
      segmented ``cummin``, see :func:`_run_min`), which covers 4-neighbours
      and crosses a straight run in one step,
    * two pointer jumps: a pixel adopts the current label of the pixel its
      label names, which lies in the same blob.

    At the fixed point every blob carries the label of its first pixel in
    raster order. Convergence is checked with one scalar device->host sync per
    iteration; compact blobs need a handful of iterations, tortuous ones about
    as many as they have turns.

    Args:
        mask (Tensor): Bool tensor (..., H, W).
        connectivity (int): 8 (OpenCV's contour tracing) or 4.

    Returns:
        Tensor: int64 labels (..., H, W): 0 for background, otherwise
        ``1 + raster index (row * W + col)`` of the blob's first pixel.
        Labels are not consecutive.
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

    Equals painting ``[y, y + h) x [x, x + w)`` for every OpenCV
    ``boundingRect`` of ``findContours(RETR_EXTERNAL)`` (see the module
    docstring). Extents are reduced per blob with ``scatter_reduce`` and the
    rectangles are painted through a difference array plus two cumulative
    sums, so the cost does not depend on the number of blobs or maps.

    Args:
        mask (Tensor): Bool foreground (..., H, W).
        box_clamp (bool): Clamp each exclusive right/bottom limit to
            ``W - 1`` / ``H - 1`` like the reference, so a rectangle touching
            the right or bottom edge loses its last column or row (a blob only
            in the last column or row then paints nothing).

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
    # Each blob reduces into the slot of its first pixel; background goes to
    # an extra dummy slot ``hw`` that is dropped afterwards.
    slot = torch.where(flat > 0, flat - 1, hw)
    pix = torch.arange(hw, device=mask.device)
    rows = (pix // W).expand(num, hw)
    cols = (pix % W).expand(num, hw)

    def reduce(values: Tensor, init: int, how: str) -> Tensor:
        acc = torch.full((num, hw + 1), init, dtype=torch.long, device=mask.device)
        return acc.scatter_reduce_(1, slot, values, reduce=how)[:, :hw]

    # Unused slots keep (x1, y1) = (W, H) and (x2, y2) = (0, 0): invalid.
    y1, x1 = reduce(rows, H, 'amin'), reduce(cols, W, 'amin')
    y2, x2 = reduce(rows, -1, 'amax') + 1, reduce(cols, -1, 'amax') + 1
    if box_clamp:
        x2 = x2.clamp(max=W - 1)
        y2 = y2.clamp(max=H - 1)
    valid = ((x2 > x1) & (y2 > y1)).int()
    # 2-D difference array on an (H + 1) x (W + 1) grid: +1 at the top-left
    # and bottom-right corners, -1 at the other two; the 2-D prefix sum then
    # counts how many rectangles cover each pixel.
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
    """Box mask of normalised score maps: :func:`binarize_like_reference`
    followed by :func:`component_boxes_union` (docs/method.md §4.3 steps 2-3, 6.3 step
    5.1).

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
    """Tight bounding box of all foreground pixels of each map (CWR, docs/method.md §4.5
    step 2a-2b).

    ``x1``/``y1`` are the first active column/row, ``x2``/``y2`` the last
    active one plus one. With ``box_clamp`` the exclusive ends are clamped
    to ``W - 1`` / ``H - 1`` as in the reference. The box is invalid (the
    reference's "degenerate box" that stops CWR) when the mask is empty or
    ``x1 == x2`` or ``y1 == y2`` after clamping.

    Args:
        mask (Tensor): Bool (..., H, W).
        box_clamp (bool): Reproduce the reference clamping.

    Returns:
        RegionBox: int64 coordinates and a bool ``valid``, each of shape
        ``mask.shape[:-2]``, on the mask's device.
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
    """First active index and last active index + 1 along the last dim
    (``(size, 0)`` for an empty line)."""
    idx = torch.arange(size, device=active.device)
    first = torch.where(active, idx, size).amin(dim=-1)
    end = torch.where(active, idx + 1, 0).amax(dim=-1)
    return first, end
