"""The determinism contract as checks that return the violations.

Scores agree within :data:`SCORE_ATOL`, tags and mask pixels except at ties;
see docs/determinism.md, "The contract".
"""
import json
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..utils.normalize import minmax_normalize

__all__ = [
    'SCORE_ATOL', 'DECISION_TIE', 'PIXEL_TIE', 'tag_decision_margin', 'cam_box_margin',
    'compare_tag_scores', 'read_scores_file', 'unexplained_label_flips'
]

#: Largest score difference the contract allows (docs/determinism.md, "Measured").
SCORE_ATOL = 1e-4
#: Relative margin to a threshold within which a discrete decision may flip.
DECISION_TIE = 1e-4
#: Two mask channels closer than this may swap (fp16 CAMs: spacing 4.9e-4 below 1).
PIXEL_TIE = 2e-3


def _relative_gap(values: Tensor, thresh: Tensor, scale: Tensor) -> Tensor:
    """``min |values - thresh| / scale`` over the last dim (inf when empty)."""
    gap = (values - thresh).abs() / scale.clamp_min(torch.finfo(torch.float32).tiny)
    return gap.amin(dim=-1) if gap.shape[-1] else torch.full(gap.shape[:-1], float('inf'))


def tag_decision_margin(out: Mapping[str, Tensor], tag_ratio: float, cwr_ratio: float,
                        cwr_region_thr: float) -> Tensor:
    """Per image, the smallest relative margin of TagCLIP's discrete decisions.

    Covers the tag threshold, the CWR candidate and region thresholds and the
    DMAR box binarisation; below :data:`DECISION_TIE` a rounding can flip one.

    Args:
        out (Mapping[str, Tensor]): The fields of :meth:`TagCLIP.tag`'s output
            as a mapping, ``vars(output)`` (``p_hat``, ``p_ref``, ``p_local``,
            ``p_final``).
        tag_ratio (float): The tagger's ``tag_ratio``.
        cwr_ratio (float): The tagger's ``cwr_ratio``.
        cwr_region_thr (float): The tagger's ``cwr_region_thr``.

    Returns:
        Tensor: (B,) float32 margins.
    """
    p_final = out['p_final'].float()
    p_local = out['p_local'].float()
    p_ref = out['p_ref'].float()
    p_hat = out['p_hat'].float()
    c_fg = p_final.shape[1]
    # Tags: s > min + r * (max - min).
    lo, hi = p_final.amin(1, keepdim=True), p_final.amax(1, keepdim=True)
    tag = _relative_gap(p_final, lo + tag_ratio * (hi - lo), hi - lo)
    # CWR candidates: p_local > mi + r * (ma - mi) over all of p_ref.
    flat = p_ref.flatten(1)
    mi, ma = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    theta = mi + cwr_ratio * (ma - mi)
    cand_gap = _relative_gap(p_local, theta, ma - mi)
    # CWR regions of the candidates: normalised map > region threshold.
    cand = p_local > theta
    region = (minmax_normalize(p_ref[..., :c_fg], dim=1) - cwr_region_thr).abs()  # (B, N, C)
    region = region.masked_fill(~cand[:, None, :], float('inf')).flatten(1).amin(1)
    # DMAR boxes: floor(255 v) > trunc(255 * mean(v)); a constant map is exact.
    maps = p_hat.transpose(1, 2)  # (B, C, N)
    flat_map = (maps.amax(-1) == maps.amin(-1))[..., None]
    v = minmax_normalize(maps, dim=-1)
    level = torch.trunc(v.mean(-1, keepdim=True) * 255)
    pixel = ((v * 255 - (level + 1)).abs() / 255).masked_fill(flat_map, float('inf'))
    pixel = pixel.flatten(1).amin(1)
    mean255 = v.mean(-1) * 255
    level_gap = ((mean255 - mean255.round()).abs() / 255).masked_fill(flat_map[..., 0],
                                                                      float('inf')).amin(1)
    return torch.stack([tag, cand_gap, region, pixel, level_gap]).amin(0)


def cam_box_margin(cams: Tensor, ratio: float, valid: Optional[Tensor] = None) -> Tensor:
    """Per image, the smallest margin of CLIP-ES's CAM box binarisation.

    The distance of ``255 v`` to the box level ``trunc(ratio * max q)``, in
    units of the normalised map; the maximum itself is left out.

    Args:
        cams (Tensor): (B, K, N) normalised Grad-CAMs.
        ratio (float): The labeler's ``caa_box_thr``.
        valid (Tensor, optional): (B, K) bool, False for padding rows.

    Returns:
        Tensor: (B,) float32 margins (inf for an image without tags).
    """
    v = cams.float()
    q_max = torch.floor(v.amax(-1, keepdim=True) * 255)
    level = torch.trunc(ratio * q_max)
    gap = (v * 255 - (level + 1)).abs() / 255
    gap = gap.masked_fill(v >= v.amax(-1, keepdim=True), float('inf'))
    if valid is not None:
        gap = gap.masked_fill(~valid[..., None], float('inf'))
    return gap.flatten(1).amin(1) if gap.shape[1] else torch.full((v.shape[0], ), float('inf'))


def read_scores_file(path: str) -> Dict[str, Tuple[List[float], List[int]]]:
    """``scores.jsonl`` of a tagging run -> ``{img_id: (scores, tags)}``."""
    records = {}
    with open(path, encoding='utf-8') as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                records[r['img_id']] = (r['scores'], r['tags'])
    return records


def compare_tag_scores(a: Mapping[str, Tuple[Sequence[float], Sequence[int]]],
                       b: Mapping[str, Tuple[Sequence[float], Sequence[int]]],
                       tag_ratio: float,
                       atol: float = SCORE_ATOL,
                       tied_images: Sequence[str] = ()) -> List[str]:
    """Check two tagging runs against the contract; return the violations.

    Args:
        a (Mapping): ``{img_id: (scores, tags)}``, e.g. from :func:`read_scores_file`.
        b (Mapping): The second run, as ``a``.
        tag_ratio (float): The tagger's ``tag_ratio`` (to locate threshold
            ties from the scores alone).
        atol (float): Score tolerance.
        tied_images (Sequence[str]): Images known to have an internal
            decision tie (:func:`tag_decision_margin`); their scores and tags
            may differ.

    Returns:
        list[str]: One message per violation; empty when the runs agree.
    """
    problems = []
    if set(a) != set(b):
        problems.append(f'different images: only in the first {sorted(set(a) - set(b))[:5]}, '
                        f'only in the second {sorted(set(b) - set(a))[:5]}')
    for img_id in sorted(set(a) & set(b)):
        sa, sb = (torch.as_tensor(x[0], dtype=torch.float64) for x in (a[img_id], b[img_id]))
        if sa.shape != sb.shape:
            problems.append(f'{img_id}: {sa.numel()} scores against {sb.numel()}')
            continue
        delta = (sa - sb).abs().max().item() if sa.numel() else 0.
        if delta > atol and img_id not in tied_images:
            problems.append(f'{img_id}: scores differ by {delta:.3g} > {atol:g}')
        tags_a, tags_b = set(a[img_id][1]), set(b[img_id][1])
        near = set()
        for s in (sa, sb):
            if s.numel():
                t = s.min() + tag_ratio * (s.max() - s.min())
                near |= set(((s - t).abs() <= atol).nonzero().flatten().tolist())
        if img_id in tied_images:
            near = tags_a ^ tags_b
        flipped = (tags_a ^ tags_b) - near
        if flipped:
            problems.append(f'{img_id}: tags {sorted(flipped)} differ and are not at a tie')
    return problems


def unexplained_label_flips(labels_a: Tensor, labels_b: Tensor, probs_a: Tensor, probs_b: Tensor,
                            tie: float = PIXEL_TIE) -> Tensor:
    """Mask pixels whose labels differ although no two channels tie there.

    Args:
        labels_a (Tensor): (H, W) label map of the first run.
        labels_b (Tensor): (H, W) label map of the second run.
        probs_a (Tensor): (C, H, W) channels ``labels_a`` is the argmax of (background first).
        probs_b (Tensor): (C, H, W) channels ``labels_b`` is the argmax of.
        tie (float): Channel gap under which a pixel may flip.

    Returns:
        Tensor: (H, W) bool, True where a flip is not explained by a tie.
    """

    def gap(p: Tensor) -> Tensor:
        if p.shape[0] < 2:
            return torch.full(p.shape[1:], float('inf'))
        top2 = p.float().topk(2, dim=0).values
        return top2[0] - top2[1]

    return (labels_a != labels_b) & (gap(probs_a) > tie) & (gap(probs_b) > tie)
