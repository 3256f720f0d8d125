"""Per-image reference implementations of TagCLIP and CLIP-ES, with loops.

They follow docs/method.md literally, one image, class and tag at a time, as
the yardstick of the vectorised models. Deliberately slow.
"""
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.quirks import Quirks

__all__ = [
    'binarize_reference', 'boxes_union_reference', 'reference_tagclip', 'cam_box_reference',
    'reference_cams'
]


def binarize_reference(v: np.ndarray, thresh: float, relative: bool) -> np.ndarray:
    """Quantise to uint8, then threshold at ``thresh * 255`` (``thresh * max`` if ``relative``)."""
    q = (v.astype(np.float32) * 255).astype(np.uint8)
    level = int(thresh * q.max()) if relative else int(thresh * 255)
    return cv2.threshold(q, level, 255, cv2.THRESH_BINARY)[1] > 0


def boxes_union_reference(fg: np.ndarray, clamp: bool) -> np.ndarray:
    """Union of external contours' bounding rectangles; ``clamp`` clamps right/bottom."""
    h, w = fg.shape
    box = np.zeros((h, w), np.float32)
    contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    for cnt in contours:
        x, y, bw, bh = cv2.boundingRect(cnt)
        x2, y2 = x + bw, y + bh
        if clamp:
            x2, y2 = min(x2, w - 1), min(y2, h - 1)
        box[y:y2, x:x2] = 1
    return box


def reference_tagclip(model, image: Tensor) -> Dict[str, Tensor]:
    """TagCLIP (docs/method.md, "TagCLIP, step by step") for ONE image, with loops.

    Every hyperparameter is read from ``model`` (the settings of the model
    under test, so the two cannot drift apart); only the CLIP weights and the
    text embeddings are shared, never the model's vectorised code.

    Args:
        model: A :class:`~tagclip_mmseg.models.TagCLIP`. Read from it:
            ``quirks`` (``box_clamp``, ``cwr_early_exit``,
            ``pos_embed_fp16``), ``vote_k``,
            ``avg_layers``, ``self_attn_mask_value``, ``cwr``, ``cwr_ratio``,
            ``cwr_region_thr``, ``cwr_crop_size``, ``cwr_mask_value``,
            ``fusion_lambda`` and ``tag_ratio``.
        image (Tensor): Normalised (3, H, W) image, sides multiples of the
            patch size.

    Returns:
        dict: ``p_coarse``, ``p_ref``, ``p_local``, ``p_final``, ``tags`` and
        ``cwr_done`` (bool per foreground class: reidentified).
    """
    quirks: Quirks = model.quirks
    vit = model.clip.visual
    text = model.classifier()
    c_all, c_fg = text.shape[0], model.num_classes
    p = vit.patch_size
    hp, wp = image.shape[1] // p, image.shape[2] // p
    n = hp * wp
    dev = image.device
    # 4.1 coarse pass: self-only last layer
    self_only = torch.full((n + 1, n + 1), float(model.self_attn_mask_value), device=dev)
    self_only.fill_diagonal_(0)
    # Mixed-precision quirk: the resampled positional embedding is rounded to fp16.
    out = vit.forward_attention(image[None], attn_masks={vit.num_layers - 1: self_only},
                                round_pos_embed_fp16=quirks.pos_embed_fp16)
    z = F.normalize(out.tokens[0].float(), dim=-1)
    p_coarse = (100 * z @ text.t())[1:].softmax(dim=-1)
    # 4.2 vote and average
    maps = [a[0, 1:, 1:] for a in out.attn_maps]
    count = torch.zeros(n, n, device=dev)
    for b in maps:
        count += (b > b.mean()).float()
    vote = (count >= model.vote_k).float()
    avg = sum(maps[i] for i in model.avg_layers) / len(model.avg_layers)
    w = vote * avg
    # 4.3 first refinement, class boxes, second refinement
    p_hat = w @ p_coarse
    p_ref = torch.zeros(n, c_all, device=dev)
    for c in range(c_all):
        col = p_hat[:, c]
        if col.max() <= 0:
            continue
        v = col - col.min()
        v = (v / v.max()).float().cpu().numpy().reshape(hp, wp)
        fg = binarize_reference(v, v.mean(), relative=False)
        box = torch.from_numpy(boxes_union_reference(fg, clamp=quirks.box_clamp)).flatten().to(dev)
        p_ref[:, c] = (w * box[None, :]) @ p_coarse[:, c]
    p_local = p_ref[:, :c_fg].max(dim=0).values
    # 4.5 CWR
    p_final = p_local.clone()
    done = torch.zeros(c_fg, dtype=torch.bool, device=dev)
    ma, mi = p_ref.max(), p_ref.min()
    theta = mi + model.cwr_ratio * (ma - mi)
    lam = model.fusion_lambda
    s = model.cwr_crop_size
    g = s // p
    for c in range(c_fg if model.cwr else 0):
        if not p_local[c] > theta:
            continue
        col = p_ref[:, c]
        v = (col - col.min()) / (col.max() - col.min())
        m = (v > model.cwr_region_thr).reshape(hp, wp)
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(xs) == 0:  # constant map (0/0): no region, a degenerate box
            x1 = x2 = y1 = y2 = 0
        else:
            x1, x2 = int(xs.min()), int(xs.max()) + 1
            y1, y2 = int(ys.min()), int(ys.max()) + 1
        if quirks.box_clamp:
            x2, y2 = min(x2, wp - 1), min(y2, hp - 1)
        if x1 >= x2 or y1 >= y2:
            if quirks.cwr_early_exit:
                break
            continue
        crop = image[:, p * y1:p * y2, p * x1:p * x2][None]
        crop = F.interpolate(crop, size=(s, s), mode='bilinear', align_corners=False)
        mc = m[y1:y2, x1:x2][None, None].float()
        mc = F.interpolate(mc, size=(g, g), mode='nearest')[0, 0].flatten() > 0
        mask = torch.zeros(g * g + 1, g * g + 1, device=dev)
        mask[0, 1:][~mc] = float(model.cwr_mask_value)
        cls_tok = vit(crop, attn_masks={i: mask for i in range(vit.num_layers)},
                      round_pos_embed_fp16=quirks.pos_embed_fp16)[0, 0]
        glob = (100 * F.normalize(cls_tok.float(), dim=-1) @ text.t()).softmax(dim=-1)
        p_final[c] = lam * p_local[c] + (1 - lam) * glob[c]
        done[c] = True
    # 4.6 tags
    t = p_final.min() + model.tag_ratio * (p_final.max() - p_final.min())
    tags = p_final > t
    if not tags.any() and p_final.max() > p_final.min():  # equal scores: no evidence, no tag
        tags[p_final.argmax()] = True
    return dict(p_coarse=p_coarse, p_ref=p_ref, p_local=p_local, p_final=p_final, tags=tags,
                cwr_done=done)


def cam_box_reference(cam: np.ndarray, ratio: float, clamp: bool) -> np.ndarray:
    """CLIP-ES box of one CAM: union of contour rectangles above ``ratio * max``."""
    return boxes_union_reference(binarize_reference(cam, ratio, relative=True), clamp)


def reference_cams(model, image: Tensor, tags: Sequence[int], ori_hw: Tuple[int, int],
                   quirks: Optional[Quirks] = None) -> Tuple[Tensor, Tensor]:
    """CLIP-ES for one image, one tag at a time.

    docs/method.md, "CLIP-ES pseudo masks from tags".

    ``quirks`` (default: the model's) decides ``pos_embed_fp16``,
    ``grad_cam_double_norm``, ``box_clamp`` and ``cam_fp16``.

    Returns:
        tuple: Refined CAMs (K, H, W) at the original size and the label map.
    """
    quirks = model.quirks if quirks is None else quirks
    vit = model.clip.visual
    last = vit.num_layers - 1
    text = model.text_embeddings(model.class_names + model.background_words, model.templates)
    sel = text[list(tags) + list(range(model.num_classes, text.shape[0]))]
    with torch.no_grad():
        out = vit.forward_until(image[None], last, attn_layers=range(last),
                                round_pos_embed_fp16=quirks.pos_embed_fp16)
    maps = [a[0, 1:, 1:] for a in out.attn_maps]
    hp, wp = out.grid_hw
    blk = vit.transformer.resblocks[last]
    cams, last_map = [], None
    for k in range(len(tags)):
        with torch.enable_grad():
            g = blk.ln_1(out.hidden).detach().requires_grad_(True)
            y, w = blk.forward_from_normed(out.hidden, g, need_weights=True)
            f = vit.ln_post(y[:, 1:]).mean(dim=1) @ vit.proj
            probs = (100 * F.normalize(f, dim=-1) @ sel.t()).softmax(dim=-1)
            probs[0, k].backward()
        last_map = w[0, 1:, 1:].detach()
        act, grad = g.detach()[0, 1:], g.grad[0, 1:]
        cam = F.relu(act @ grad.mean(dim=0))
        # Rescaled once per target layer, then again after the layer mean
        # (one layer: the mean is the identity); grad_cam_double_norm keeps both.
        for _ in range(2 if quirks.grad_cam_double_norm else 1):
            cam = cam - cam.min()
            cam = cam / (cam.max() + 1e-7)
        cams.append(cam)
    all_maps = maps + [last_map]
    avg = sum(all_maps[i] for i in model.caa_layers) / len(model.caa_layers)
    t = avg.clone()
    for _ in range(3):
        t = t / t.sum(dim=0, keepdim=True)
        t = t / t.sum(dim=1, keepdim=True)
    t = (t + t.t()) / 2
    t = t @ t
    refined = []
    for cam in cams:
        box = torch.from_numpy(
            cam_box_reference(cam.view(hp, wp).float().cpu().numpy(), model.caa_box_thr,
                              quirks.box_clamp)).flatten().to(image.device)
        r = (t * box[None, :]) @ cam
        r = r - r.min()
        r = r / (r.max() + 1e-7)
        up = F.interpolate(r.view(1, 1, hp, wp), size=ori_hw, mode='bilinear',
                           align_corners=False)[0, 0]
        refined.append(up.half().float() if quirks.cam_fp16 else up)
    refined = torch.stack(refined)
    bg = 1 - refined.max(dim=0, keepdim=True).values
    idx = torch.cat([bg, refined]).argmax(dim=0)
    label = torch.tensor([0] + [c + 1 for c in tags], device=idx.device)[idx]
    return refined, label
