"""DMAR / CAA ops against per-image, per-class loop implementations.

The loop references follow docs/method.md line by line, with OpenCV for the boxes, so the
batched, single-matmul versions must match them. Sections:
"DMAR part 1: the attention vote and the averaged attention",
"DMAR part 2: first refinement and the class-wise box mask" and
"Class-aware attention affinity (CAA)".
"""

import cv2
import numpy as np
import pytest
import torch

from tagclip_mmseg.models.ops import (AttentionVote, affinity_from_attention, caa_refine,
                                      dmar_class_boxes, dmar_refine)
from tagclip_mmseg.testing.reference import binarize_reference as ref_binarize
from tagclip_mmseg.testing.reference import boxes_union_reference
from tagclip_mmseg.utils import minmax_normalize

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


# ----------------------------------------------------------------- references
def ref_box_union(mask: np.ndarray, clamp: bool) -> np.ndarray:
    return boxes_union_reference(mask, clamp).astype(bool)


def ref_vote(maps, vote_min, avg_layers):
    """W from all stored maps, one image at a time.

    See docs/method.md, "DMAR part 1: the attention vote and the averaged attention".
    """
    out = []
    for b in range(maps[0].shape[0]):
        blocks = [m[b, 1:, 1:].float() for m in maps]
        count = sum((blk > blk.mean()).int() for blk in blocks)
        avg = torch.stack([blocks[i] for i in avg_layers]).mean(0)
        out.append((count >= vote_min).float() * avg)
    return torch.stack(out)


def ref_dmar_boxes(p_hat: torch.Tensor, grid, clamp):
    """(C, Hp, Wp) boxes of one image's first-pass scores.

    See docs/method.md, "DMAR part 2: first refinement and the class-wise box mask", step 2.
    """
    H, W = grid
    boxes = []
    for col in p_hat.T.numpy():
        box = np.zeros((H, W), bool)
        shifted = col - col.min()
        if col.max() > 0 and shifted.max() > 0:  # constant -> NaN in the reference -> empty
            norm = shifted / shifted.max()
            box = ref_box_union(ref_binarize(norm.reshape(H, W), norm.mean(), False), clamp)
        boxes.append(box)
    return torch.from_numpy(np.stack(boxes))


def ref_dmar(W, p_coarse, grid, clamp):
    """P_ref per image and class: (W * 1 b_c^T) @ P_coarse[:, c]."""
    p_hat = torch.bmm(W, p_coarse)  # shared with the op so that boxes see identical values
    out = torch.zeros_like(p_coarse)
    for b in range(W.shape[0]):
        boxes = ref_dmar_boxes(p_hat[b], grid, clamp)
        for c in range(p_coarse.shape[2]):
            key_mask = boxes[c].reshape(1, -1).to(W.dtype)
            out[b, :, c] = (W[b] * key_mask) @ p_coarse[b, :, c]
    return out


def ref_affinity(A):
    t = A.clone()
    for _ in range(3):
        t = t / t.sum(dim=0, keepdim=True)
        t = t / t.sum(dim=1, keepdim=True)
    t = (t + t.T) / 2
    return t @ t


def ref_caa(T, cams, grid, thresh, clamp):
    H, W = grid
    out = []
    for cam in cams:
        box = ref_box_union(ref_binarize(cam.numpy().reshape(H, W), thresh, True), clamp)
        key_mask = torch.from_numpy(box).reshape(1, -1).to(T.dtype)
        r = (T * key_mask) @ cam
        r = r - r.min()
        out.append(r / (1e-7 + r.max()))
    return torch.stack(out)


# ------------------------------------------------------------------- inputs
def local_attention(B, grid, layers, seed, cls=True):
    """Softmax attention that prefers nearby patches, a different width per layer."""
    g = torch.Generator().manual_seed(seed)
    H, W = grid
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing='ij')
    pos = torch.stack([ys.flatten(), xs.flatten()], 1).float()
    d2 = torch.cdist(pos, pos)**2
    if cls:
        d2 = torch.nn.functional.pad(d2, (1, 0, 1, 0), value=4.0)
    maps = []
    for layer in range(layers):
        sigma = 0.7 + 0.4 * layer
        logits = -d2 / (2 * sigma**2) + 0.5 * torch.randn(B, *d2.shape, generator=g)
        maps.append(logits.softmax(-1))
    return maps


def real_logits(photo_paths, grid, num):
    assert len(photo_paths) >= num, f'need {num} photos, got {len(photo_paths)}'
    maps = []
    for f in photo_paths[:num]:
        img = cv2.imread(f, cv2.IMREAD_GRAYSCALE)
        assert img is not None, f'cannot read {f}'
        small = cv2.resize(img, (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
        maps.append(torch.from_numpy(small.astype(np.float32)).flatten())
    return torch.stack(maps, 1) / 255.0  # (N, num)


# ---------------------------------------------------------------- the vote
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_streaming_vote_equals_stored_maps(dtype):
    maps = [m.to(dtype) for m in local_attention(2, (4, 5), 12, seed=0)]
    vote = AttentionVote()  # K=4, Psi=(8, 9, 10)
    for i, m in enumerate(maps):
        vote.update(i, m)
    count = vote.count.clone()
    assert count.dtype == torch.uint8 and count.shape == (2, 20, 20)
    W = vote.finalize()
    assert W.dtype == torch.float32 and W.shape == (2, 20, 20)
    ref = ref_vote(maps, 4, (8, 9, 10))
    torch.testing.assert_close(W, ref, rtol=1e-6, atol=1e-7)
    ref_count = sum((m[:, 1:, 1:].float() > m[:, 1:, 1:].float().mean((1, 2), keepdim=True))
                    .to(torch.uint8) for m in maps)
    assert torch.equal(count, ref_count)
    assert 0 < (W > 0).float().mean() < 1  # the vote removed something, not everything
    assert vote.count is None and vote.layers_seen == ()  # finalize resets


def test_vote_without_vote_is_plain_average_and_patch_only_input():
    maps = local_attention(1, (3, 3), 12, seed=1, cls=False)
    avg = AttentionVote(avg_layers=range(4, 11), vote_min=None, has_cls_token=False)
    for i, m in enumerate(maps):
        avg.update(i, m.requires_grad_())
    assert avg.count is None
    out = avg.finalize()
    assert not out.requires_grad
    torch.testing.assert_close(out, torch.stack(maps[4:11]).mean(0).detach())


def test_vote_at_a_tie_with_the_layer_mean_hand_computed():
    """A pair votes only when strictly above its layer's mean ``tau``.

    The patch block ``[[.25, .25], [.5, 0]]`` has mean ``tau = .25`` (exact in
    binary): only the ``.5`` pair is above it, so with one layer and
    ``vote_min = 1`` the two pairs equal to ``tau`` are dropped. A uniform
    layer has no pair above its mean and gives 0 everywhere.
    """
    vote = AttentionVote(avg_layers=(0, ), vote_min=1)
    assert vote.vote_min == 1
    block = torch.tensor([[.25, .25], [.5, 0.]])
    attn = torch.zeros(1, 3, 3)
    attn[0, 0] = torch.tensor([.9, .05, .05])  # [CLS] row and column: not voted on
    attn[0, 1:, 1:] = block
    vote.update(0, attn)
    assert vote.count.tolist() == [[[0, 0], [1, 0]]]
    assert vote.finalize().tolist() == [[[0., 0.], [.5, 0.]]]

    uniform = AttentionVote(avg_layers=(0, ), vote_min=1, has_cls_token=False)
    uniform.update(0, torch.full((1, 2, 2), .25))
    assert uniform.finalize().tolist() == [[[0., 0.], [0., 0.]]]


def test_vote_errors():
    maps = local_attention(1, (2, 2), 3, seed=2)
    vote = AttentionVote(avg_layers=(1, 2), vote_min=2)
    vote.update(0, maps[0])
    with pytest.raises(RuntimeError, match='twice'):
        vote.update(0, maps[0])
    with pytest.raises(ValueError, match='shape'):
        vote.update(1, local_attention(1, (2, 3), 1, seed=3)[0])
    with pytest.raises(RuntimeError, match='never streamed'):
        vote.finalize()
    with pytest.raises(ValueError):
        AttentionVote(avg_layers=(-1, ))


def test_vote_plugs_into_vision_transformer(request):
    pytest.importorskip('mmseg')
    vit = request.getfixturevalue('tiny_clip').visual
    x = torch.randn(2, 3, 48, 64)
    vote = AttentionVote(avg_layers=(1, 2), vote_min=2)
    maps = []

    def both(layer, probs):
        vote.update(layer, probs)
        maps.append(probs)

    with torch.no_grad():
        vit.forward_attention(x, attn_callback=both, attn_masks={-1: _self_only(x, vit)})
    W = vote.finalize()
    assert W.shape == (2, 12, 12)
    torch.testing.assert_close(W, ref_vote(maps, 2, (1, 2)))


def _self_only(x, vit):
    L = (x.shape[-2] // vit.patch_size) * (x.shape[-1] // vit.patch_size) + 1
    return (1 - torch.eye(L)) * -100.0


# -------------------------------------------------------------------- DMAR
@pytest.mark.parametrize('clamp', [True, False])
def test_dmar_boxes_and_refine_match_loop_on_real_maps(real_photo_paths, clamp):
    grid, C, B = (6, 8), 7, 2
    base = real_logits(real_photo_paths, grid, C + 1)
    # two images: different class->photo assignments, softmax over classes
    logits = torch.stack([base[:, :C], base[:, 1:]]) * 8.0
    p_coarse = logits.softmax(-1)
    vote = AttentionVote()
    for i, m in enumerate(local_attention(B, grid, 12, seed=4)):
        vote.update(i, m)
    W = vote.finalize()
    p_hat = torch.bmm(W, p_coarse)
    boxes = dmar_class_boxes(p_hat, grid, box_clamp=clamp)
    assert boxes.shape == (B, C, *grid) and boxes.dtype == torch.bool
    for b in range(B):
        assert torch.equal(boxes[b], ref_dmar_boxes(p_hat[b], grid, clamp))
    assert boxes.any() and not boxes.all()
    p_ref = dmar_refine(W, p_coarse, grid, box_clamp=clamp)
    torch.testing.assert_close(p_ref, ref_dmar(W, p_coarse, grid, clamp), rtol=1e-5, atol=1e-6)
    # batched == per image
    single = torch.cat([dmar_refine(W[b:b + 1], p_coarse[b:b + 1], grid, clamp)
                        for b in range(B)])
    torch.testing.assert_close(p_ref, single, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('device', DEVICES)
def test_dmar_random_float64_independent_products(device):
    grid, C, B = (5, 7), 9, 3
    g = torch.Generator().manual_seed(5)
    p_coarse = (3 * torch.randn(B, 35, C, generator=g)).softmax(-1).double()
    vote = AttentionVote()
    for i, m in enumerate(local_attention(B, grid, 12, seed=6)):
        vote.update(i, m.double())
    W = vote.finalize()
    assert W.dtype == torch.float64
    got = dmar_refine(W.to(device), p_coarse.to(device), grid).cpu()
    ref = torch.stack([ref_dmar(W[b:b + 1], p_coarse[b:b + 1], grid, True)[0] for b in range(B)])
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_dmar_half_inputs_compute_in_fp32():
    grid = (4, 6)
    vote = AttentionVote()
    for i, m in enumerate(local_attention(1, grid, 12, seed=7)):
        vote.update(i, m)
    W = vote.finalize()
    p = (2 * torch.randn(1, 24, 5, generator=torch.Generator().manual_seed(8))).softmax(-1)
    for dtype in (torch.float16, torch.bfloat16):
        w16, p16 = W.to(dtype), p.to(dtype)
        got = dmar_refine(w16, p16, grid)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref_dmar(w16.float(), p16.float(), grid, True),
                                   rtol=1e-5, atol=1e-6)


def test_dmar_degenerate_columns_give_empty_boxes():
    p_hat = torch.rand(2, 12, 4)
    p_hat[0, :, 1] = 0.3  # constant
    p_hat[1, :, 2] = 0.0  # max <= 0
    p_hat[1, :, 3] = -torch.rand(12)  # negative
    boxes = dmar_class_boxes(p_hat, (3, 4))
    assert not boxes[0, 1].any() and not boxes[1, 2].any() and not boxes[1, 3].any()
    out = dmar_refine(torch.zeros(1, 12, 12), torch.rand(1, 12, 3), (3, 4))
    assert torch.equal(out, torch.zeros_like(out))
    with pytest.raises(ValueError, match='grid_hw'):
        dmar_refine(torch.zeros(1, 12, 12), torch.rand(1, 12, 3), (3, 5))


# --------------------------------------------------------------------- CAA
def test_affinity_matches_loop():
    maps = local_attention(2, (4, 6), 4, seed=9, cls=False)
    A = torch.stack(maps).mean(0)
    T = affinity_from_attention(A)
    ref = torch.stack([ref_affinity(a) for a in A])
    torch.testing.assert_close(T, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(T, T.transpose(1, 2), rtol=1e-5, atol=1e-7)
    T16 = affinity_from_attention(A.half())
    assert T16.dtype == torch.float32
    zero = affinity_from_attention(torch.zeros(3, 3))
    assert torch.equal(zero, torch.zeros(3, 3))


def _cams(B, K, grid, seed):
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.avg_pool2d(
        torch.randn(B * K, 1, grid[0] + 2, grid[1] + 2, generator=g), 3, stride=1)
    cams = minmax_normalize(smooth.relu().view(B, K, -1), dim=-1, eps=1e-7)
    return cams


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('clamp', [True, False])
@pytest.mark.parametrize('thresh', [0.4, 0.7])
def test_caa_refine_matches_loop(thresh, clamp, device):
    grid, B, K = (6, 7), 2, 4
    A = torch.stack(local_attention(B, grid, 3, seed=10, cls=False)).mean(0)
    T = affinity_from_attention(A)
    cams = _cams(B, K, grid, seed=11)
    cams[1, 3] = 0  # a tag whose CAM died in the ReLU
    got = caa_refine(T.to(device), cams.to(device), grid, thresh, box_clamp=clamp).cpu()
    assert got.shape == (B, K, 42) and got.dtype == torch.float32
    ref = torch.stack([ref_caa(T[b], cams[b], grid, thresh, clamp) for b in range(B)])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(got[1, 3], torch.zeros(42))
    single = torch.cat([caa_refine(T[b:b + 1], cams[b:b + 1], grid, thresh, clamp)
                        for b in range(B)])
    torch.testing.assert_close(got, single.to(got), rtol=1e-6, atol=1e-7)


def test_caa_refine_real_maps_valid_mask_and_half(real_photo_paths):
    grid = (6, 8)
    cams = minmax_normalize(real_logits(real_photo_paths, grid, 6).T.reshape(2, 3, 48), dim=-1,
                            eps=1e-7)
    A = torch.stack(local_attention(2, grid, 3, seed=12, cls=False)).mean(0)
    T = affinity_from_attention(A)
    got = caa_refine(T, cams, grid, 0.4)
    ref = torch.stack([ref_caa(T[b], cams[b], grid, 0.4, True) for b in range(2)])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    valid = torch.tensor([[True, True, False], [True, False, False]])
    masked = caa_refine(T, cams, grid, 0.4, valid=valid)
    torch.testing.assert_close(masked, got * valid[..., None])
    # per-tag thresholds as a tensor
    per_tag = caa_refine(T, cams, grid, torch.tensor([0.4, 0.7, 0.4]).expand(2, 3))
    torch.testing.assert_close(per_tag[:, 1],
                               torch.stack([ref_caa(T[b], cams[b, 1:2], grid, 0.7, True)[0]
                                            for b in range(2)]), rtol=1e-5, atol=1e-6)
    # fp16 CAMs / affinity (CLIP-ES runs in fp16): computed in fp32 on the fp16 values
    half = caa_refine(T.half(), cams.half(), grid, 0.4)
    assert half.dtype == torch.float32
    ref_half = torch.stack(
        [ref_caa(T[b].half().float(), cams[b].half().float(), grid, 0.4, True) for b in range(2)])
    torch.testing.assert_close(half, ref_half, rtol=1e-5, atol=1e-6)
