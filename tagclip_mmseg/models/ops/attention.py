"""Attention refinements: TagCLIP's DMAR and CLIP-ES's affinity (CAA)."""
from typing import Iterable, Optional, Set, Tuple, Union

import torch
from torch import Tensor

from ...utils.normalize import compute_dtype, minmax_normalize
from .box_masks import boxes_from_scores

__all__ = [
    'AttentionVote', 'dmar_class_boxes', 'dmar_refine', 'affinity_from_attention', 'caa_refine'
]


class AttentionVote:
    """Streaming DMAR attention vote and layer average.

    See docs/method.md, "DMAR part 1: the attention vote and the averaged attention".

    Args:
        avg_layers (Iterable[int]): 0-based layer indices averaged.
        vote_min (int, optional): Layers above their mean to keep a pair.
        has_cls_token (bool): Whether maps start with the [CLS] token.
    """

    def __init__(self,
                 avg_layers: Iterable[int] = (8, 9, 10),
                 vote_min: Optional[int] = 4,
                 has_cls_token: bool = True) -> None:
        self.avg_layers = frozenset(int(i) for i in avg_layers)
        if not self.avg_layers or min(self.avg_layers) < 0:
            raise ValueError('avg_layers must be non-empty, 0-based layer indices, '
                             f'got {sorted(self.avg_layers)}')
        if vote_min is not None and not 1 <= vote_min <= 255:
            raise ValueError(f'vote_min must be in [1, 255] or None, got {vote_min}')
        self.vote_min = vote_min
        self.has_cls_token = has_cls_token
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._count: Optional[Tensor] = None
        self._sum: Optional[Tensor] = None
        self._seen: Set[int] = set()

    @property
    def count(self) -> Optional[Tensor]:
        """uint8 (B, N, N) count of layers above their mean, or ``None``."""
        return self._count

    @property
    def layers_seen(self) -> Tuple[int, ...]:
        """Layer indices streamed since the last reset, sorted."""
        return tuple(sorted(self._seen))

    def update(self, layer_idx: int, attn: Tensor) -> None:
        """Add one layer's head-averaged attention.

        Args:
            layer_idx (int): 0-based layer index.
            attn (Tensor): (B, L, L) attention probabilities.
        """
        if attn.dim() != 3 or attn.shape[-1] != attn.shape[-2]:
            raise ValueError(f'attention of layer {layer_idx} must have shape (B, L, L), '
                             f'got {tuple(attn.shape)}')
        if layer_idx in self._seen:
            raise RuntimeError(f'layer {layer_idx} was streamed twice; call reset() between '
                               'images')
        block = attn.detach()
        if self.has_cls_token:
            block = block[:, 1:, 1:]
        ref = self._sum if self._sum is not None else self._count
        if ref is not None and ref.shape != block.shape:
            raise ValueError(f'layer {layer_idx} patch block has shape {tuple(block.shape)}, '
                             f'earlier layers had {tuple(ref.shape)}; call reset() between '
                             'images')
        self._seen.add(layer_idx)
        if self.vote_min is not None:
            tau = block.mean(dim=(-2, -1), keepdim=True, dtype=torch.float32)
            above = block > tau
            if self._count is None:
                self._count = above.to(torch.uint8)
            else:
                self._count += above
        if layer_idx in self.avg_layers:
            if self._sum is None:
                self._sum = block.to(compute_dtype(block), copy=True)
            else:
                self._sum += block

    def finalize(self) -> Tensor:
        """Return ``W`` (B, N, N) and reset the accumulator."""
        missing = self.avg_layers - self._seen
        if missing:
            raise RuntimeError(f'averaged layers {sorted(missing)} were never streamed (seen '
                               f'{self.layers_seen}); check avg_layers against the model depth')
        out = self._sum.div_(len(self.avg_layers))
        if self.vote_min is not None:
            out.masked_fill_(self._count < self.vote_min, 0)
        self.reset()
        return out


def _check_grid(n: int, grid_hw: Tuple[int, int], what: str) -> Tuple[int, int]:
    hp, wp = int(grid_hw[0]), int(grid_hw[1])
    if hp * wp != n:
        raise ValueError(f'grid_hw {tuple(grid_hw)} does not match the {n} patches of {what}')
    return hp, wp


def dmar_class_boxes(p_hat: Tensor,
                     grid_hw: Tuple[int, int],
                     box_clamp: bool = True) -> Tensor:
    """DMAR class-wise box masks from first-pass scores.

    Args:
        p_hat (Tensor): First-pass refined scores (B, N, C).
        grid_hw (tuple[int, int]): Patch grid (Hp, Wp), ``Hp * Wp == N``.
        box_clamp (bool): Reference clamping of the rectangles.

    Returns:
        Tensor: Bool (B, C, Hp, Wp).
    """
    if p_hat.dim() != 3:
        raise ValueError(f'p_hat must have shape (B, N, C), got {tuple(p_hat.shape)}')
    B, N, C = p_hat.shape
    hp, wp = _check_grid(N, grid_hw, 'p_hat')
    maps = p_hat.transpose(1, 2).to(compute_dtype(p_hat))  # (B, C, N)
    norm = minmax_normalize(maps, dim=-1)
    thresh = norm.mean(dim=-1)
    boxes = boxes_from_scores(norm.reshape(B, C, hp, wp), thresh, box_clamp=box_clamp)
    return boxes & (maps.amax(dim=-1) > 0)[..., None, None]


def dmar_refine(W: Tensor,
                p_coarse: Tensor,
                grid_hw: Tuple[int, int],
                box_clamp: bool = True,
                return_first_pass: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """DMAR refinement: ``P_ref[:, c] = W @ (b_c * P_coarse[:, c])``.

    Args:
        W (Tensor): Masked averaged attention (B, N, N), rows = queries.
        p_coarse (Tensor): Coarse patch probabilities (B, N, C).
        grid_hw (tuple[int, int]): Patch grid (Hp, Wp).
        box_clamp (bool): Reference clamping of the box rectangles.
        return_first_pass (bool): Also return ``P_hat``.

    Returns:
        Tensor | tuple: ``P_ref`` (B, N, C), or ``(P_ref, P_hat)``.
    """
    if W.dim() != 3 or p_coarse.dim() != 3 or W.shape[0] != p_coarse.shape[0] \
            or W.shape[1] != W.shape[2] or W.shape[2] != p_coarse.shape[1]:
        raise ValueError(f'expected W (B, N, N) and p_coarse (B, N, C), got {tuple(W.shape)} '
                         f'and {tuple(p_coarse.shape)}')
    dtype = compute_dtype(W, p_coarse)
    w, p = W.to(dtype), p_coarse.to(dtype)
    p_hat = torch.bmm(w, p)
    boxes = dmar_class_boxes(p_hat, grid_hw, box_clamp)  # (B, C, Hp, Wp)
    p_ref = torch.bmm(w, p * boxes.flatten(2).transpose(1, 2))
    return (p_ref, p_hat) if return_first_pass else p_ref


def affinity_from_attention(attn_avg: Tensor, rounds: int = 3) -> Tensor:
    """CLIP-ES's attention affinity: ``T = square(sym(sinkhorn(A)))``.

    Args:
        attn_avg (Tensor): Averaged patch attention (..., N, N).
        rounds (int): Column/row normalisation rounds.

    Returns:
        Tensor: Affinity ``T`` (..., N, N).
    """
    if attn_avg.dim() < 2 or attn_avg.shape[-1] != attn_avg.shape[-2]:
        raise ValueError(f'attn_avg must have shape (..., N, N), got {tuple(attn_avg.shape)}')
    if rounds < 1:
        raise ValueError(f'rounds must be >= 1, got {rounds}')
    t = attn_avg.to(compute_dtype(attn_avg), copy=True)
    tiny = torch.finfo(t.dtype).tiny
    for _ in range(rounds):
        t.div_(t.sum(dim=-2, keepdim=True).clamp_min_(tiny))
        t.div_(t.sum(dim=-1, keepdim=True).clamp_min_(tiny))
    t = (t + t.transpose(-2, -1)).mul_(0.5)
    return torch.matmul(t, t)


def caa_refine(T: Tensor,
               cams: Tensor,
               grid_hw: Tuple[int, int],
               box_thresh: Union[float, Tensor],
               box_clamp: bool = True,
               valid: Optional[Tensor] = None,
               eps: float = 1e-7) -> Tensor:
    """Refine Grad-CAMs with the affinity, all tags at once.

    Args:
        T (Tensor): Affinity (B, N, N) from :func:`affinity_from_attention`.
        cams (Tensor): Normalised Grad-CAMs (B, K, N) over the patch grid.
        grid_hw (tuple[int, int]): Patch grid (Hp, Wp).
        box_thresh (float | Tensor): Box threshold as a ratio of the CAM max.
        box_clamp (bool): Reference clamping of the box rectangles.
        valid (Tensor, optional): Bool (B, K); False rows come out as zeros.
        eps (float): Added to the normalisation divisor.

    Returns:
        Tensor: Refined maps (B, K, N).
    """
    if T.dim() != 3 or cams.dim() != 3 or T.shape[0] != cams.shape[0] \
            or T.shape[1] != T.shape[2] or T.shape[2] != cams.shape[2]:
        raise ValueError(f'expected T (B, N, N) and cams (B, K, N), got {tuple(T.shape)} and '
                         f'{tuple(cams.shape)}')
    B, K, N = cams.shape
    hp, wp = _check_grid(N, grid_hw, 'cams')
    dtype = compute_dtype(T, cams)
    c = cams.to(dtype)
    boxes = boxes_from_scores(c.reshape(B, K, hp, wp), box_thresh, relative_to_max=True,
                              box_clamp=box_clamp)
    refined = torch.bmm(c * boxes.reshape(B, K, N), T.to(dtype).transpose(1, 2))
    refined = minmax_normalize(refined, dim=-1, eps=eps)
    if valid is not None:
        if valid.shape != (B, K):
            raise ValueError(f'valid must have shape {(B, K)}, got {tuple(valid.shape)}')
        refined = refined * valid.to(device=refined.device, dtype=refined.dtype)[..., None]
    return refined
