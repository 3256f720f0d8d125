"""Box-mask ops against OpenCV: the reference pipeline, written as plain loops.

The references below are the obvious per-map implementations of docs/method.md
("DMAR part 2: first refinement and the class-wise box mask",
"Class-aware attention affinity (CAA)", "CWR: class-wise reidentification") with numpy + OpenCV
(quantise with ``astype(np.uint8)``, ``cv2.threshold``, ``findContours(RETR_EXTERNAL)``,
``boundingRect``), so the batched device routines must agree with them exactly. Thresholding and the
box union are the ones the per-image references of :mod:`tagclip_mmseg.testing.reference` use.
"""

import cv2
import numpy as np
import pytest
import torch

from tagclip_mmseg.models.ops import (RegionBox, binarize_like_reference, boxes_from_scores,
                                      component_boxes_union, connected_components,
                                      quantize_like_reference, region_bbox)
from tagclip_mmseg.testing.reference import binarize_reference as ref_binarize
from tagclip_mmseg.testing.reference import boxes_union_reference
from tagclip_mmseg.utils import minmax_normalize

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
SIZES = [(1, 1), (1, 9), (7, 1), (5, 5), (6, 11), (24, 32), (17, 13)]


# ----------------------------------------------------------------- references
def ref_quantize(v: np.ndarray) -> np.ndarray:
    return (v.astype(np.float32) * 255).astype(np.uint8)


def ref_box_union(mask: np.ndarray, clamp: bool) -> np.ndarray:
    """Union of boundingRects of external contours, optionally clamped."""
    return boxes_union_reference(mask, clamp).astype(bool)


def ref_region_bbox(mask: np.ndarray, clamp: bool):
    H, W = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    if clamp:
        x2, y2 = min(x2, W - 1), min(y2, H - 1)
    if x1 == x2 or y1 == y2:
        return None
    return int(x1), int(y1), int(x2), int(y2)


def same_partition(labels: np.ndarray, ref: np.ndarray) -> bool:
    """Both labelings have the same background and the same blobs."""
    if not np.array_equal(labels > 0, ref > 0):
        return False
    fg = ref > 0
    pairs = set(zip(labels[fg].tolist(), ref[fg].tolist()))
    return len(pairs) == len(np.unique(labels[fg])) == len(np.unique(ref[fg]))


# ------------------------------------------------------------------- inputs
def random_masks(shape, seed):
    """Masks of several densities, blobs of all shapes, plus empty and full."""
    g = torch.Generator().manual_seed(seed)
    H, W = shape
    out = [torch.rand(H, W, generator=g) < p for p in (0.05, 0.2, 0.45, 0.6, 0.9)]
    smooth = torch.nn.functional.avg_pool2d(
        torch.rand(1, 1, H + 4, W + 4, generator=g), 5, stride=1)[0, 0]
    out.append(smooth > smooth.mean())
    out.append(torch.zeros(H, W, dtype=torch.bool))
    out.append(torch.ones(H, W, dtype=torch.bool))
    return torch.stack(out)


def special_masks():
    """Edge-touching blobs, nested rings, single pixels (12 x 14)."""
    H, W = 12, 14
    ms = []
    m = np.zeros((H, W), bool)
    m[1:11, 1:12] = True
    m[3:8, 3:9] = False
    m[4:6, 5:7] = True  # blob inside the ring's hole
    ms.append(m)
    m = np.zeros((H, W), bool)
    m[:, W - 1] = True  # 1-px column at the right edge -> empty box when clamped
    ms.append(m)
    m = np.zeros((H, W), bool)
    m[H - 1, 2:9] = True  # bottom edge row
    m[0, 0] = True
    m[5, 13] = True
    ms.append(m)
    m = np.zeros((H, W), bool)
    m[[0, 2, 4, 6], [0, 2, 4, 6]] = True  # isolated pixels (not 8-connected)
    m[8, 8] = m[9, 9] = m[10, 8] = True  # diagonal chain (8-connected)
    ms.append(m)
    m = np.zeros((H, W), bool)
    m[2:10, 2:12] = True
    m[4:8, 4:10] = False  # ring, nothing inside
    m[0:3, 11:14] = True  # touches ring diagonally? no: overlaps its corner
    ms.append(m)
    m = np.zeros((H, W), bool)  # spiral-like snake: long geodesic path
    m[0, :] = True
    m[:, W - 1] = True
    m[H - 1, 1:] = True
    m[2:, 1] = True
    m[2, 1:W - 2] = True
    m[2:H - 2, W - 3] = True
    m[H - 3, 3:W - 2] = True
    ms.append(m)
    return torch.from_numpy(np.stack(ms))


def real_score_maps(photo_paths, size=(24, 32)):
    """Grayscale real photos resized to a patch grid, min-max normalised."""
    maps = []
    for f in photo_paths:
        img = cv2.imread(f, cv2.IMREAD_GRAYSCALE)
        assert img is not None, f'cannot read {f}'
        small = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        maps.append(torch.from_numpy(small.astype(np.float32)))
    maps = torch.stack(maps)
    return minmax_normalize(maps, dim=(-2, -1))


# -------------------------------------------------------------------- tests
@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('shape', SIZES)
def test_connected_components_match_opencv(shape, device):
    masks = torch.cat([random_masks(shape, seed=1)])
    for connectivity in (8, 4):
        labels = connected_components(masks.to(device), connectivity=connectivity).cpu()
        assert labels.dtype == torch.long and labels.shape == masks.shape
        for m, lab in zip(masks.numpy(), labels.numpy()):
            _, ref = cv2.connectedComponents(m.astype(np.uint8), connectivity=connectivity)
            assert same_partition(lab, ref)
            # documented labels: 1 + raster index of the blob's first pixel
            flat = lab.reshape(-1)
            for value in np.unique(flat[flat > 0]):
                assert np.flatnonzero(flat == value)[0] + 1 == value


def test_connected_components_special_cases():
    masks = special_masks()
    labels = connected_components(masks)
    for m, lab in zip(masks.numpy(), labels.numpy()):
        _, ref = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        assert same_partition(lab, ref)
    assert len(np.unique(labels[0])) == 3  # background, ring, blob in its hole


def test_connected_components_scipy_special():
    ndimage = pytest.importorskip('scipy.ndimage')
    masks = special_masks()
    labels = connected_components(masks)
    for m, lab in zip(masks.numpy(), labels.numpy()):
        ref, _ = ndimage.label(m, structure=np.ones((3, 3)))
        assert same_partition(lab, ref)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('clamp', [True, False])
@pytest.mark.parametrize('shape', SIZES)
def test_box_union_matches_opencv_random(shape, clamp, device):
    masks = random_masks(shape, seed=2)
    boxes = component_boxes_union(masks.to(device), box_clamp=clamp).cpu()
    assert boxes.dtype == torch.bool and boxes.shape == masks.shape
    for m, b in zip(masks.numpy(), boxes.numpy()):
        np.testing.assert_array_equal(b, ref_box_union(m, clamp))


@pytest.mark.parametrize('clamp', [True, False])
def test_box_union_special_cases(clamp):
    masks = special_masks()
    boxes = component_boxes_union(masks, box_clamp=clamp)
    for m, b in zip(masks.numpy(), boxes.numpy()):
        np.testing.assert_array_equal(b, ref_box_union(m, clamp))
    # the 1-px right-edge column vanishes only under the quirk
    assert boxes[1].any() == (not clamp)


def test_box_union_quirk_drops_last_row_and_column():
    m = torch.zeros(4, 5, dtype=torch.bool)
    m[1:, 2:] = True  # touches bottom and right edges
    clamped = component_boxes_union(m, box_clamp=True)
    expected = torch.zeros_like(m)
    expected[1:3, 2:4] = True
    assert torch.equal(clamped, expected)
    assert torch.equal(component_boxes_union(m, box_clamp=False), m)


def test_box_union_empty_and_batch_shapes():
    empty = torch.zeros(2, 3, 4, 6, dtype=torch.bool)
    assert not component_boxes_union(empty).any()
    assert component_boxes_union(torch.zeros(0, 4, 6, dtype=torch.bool)).shape == (0, 4, 6)
    # arbitrary leading dims == flattened batch == per item
    masks = random_masks((6, 7), seed=3).view(2, 4, 6, 7)
    batched = component_boxes_union(masks)
    flat = component_boxes_union(masks.view(8, 6, 7)).view(2, 4, 6, 7)
    single = torch.stack([component_boxes_union(m) for m in masks.view(8, 6, 7)]).view_as(masks)
    assert torch.equal(batched, flat) and torch.equal(batched, single)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('shape', [(1, 9), (6, 11), (24, 32)])
def test_binarize_matches_opencv(shape, dtype):
    g = torch.Generator().manual_seed(4)
    maps = minmax_normalize(torch.rand(6, *shape, generator=g), dim=(-2, -1)).to(dtype)
    exact = maps.float().numpy()  # the values the half tensors really hold
    q = quantize_like_reference(maps)
    assert q.dtype == torch.uint8
    for v, qq in zip(exact, q.numpy()):
        np.testing.assert_array_equal(qq, ref_quantize(v))
    # absolute level: one scalar, and a per-map mean (DMAR)
    for t in (0.4, 0.7, 0.0):
        fg = binarize_like_reference(maps, t)
        for v, f in zip(exact, fg.numpy()):
            np.testing.assert_array_equal(f, ref_binarize(v, t, relative=False))
    means = torch.from_numpy(np.stack([v.mean() for v in exact]))
    fg = binarize_like_reference(maps, means)
    for v, m, f in zip(exact, means.numpy(), fg.numpy()):
        np.testing.assert_array_equal(f, ref_binarize(v, m, relative=False))
    # relative to the quantised max (CAA): CAMs divided by max + 1e-7 peak at 254
    cams = minmax_normalize(maps.float(), dim=(-2, -1), eps=1e-7)
    assert int(quantize_like_reference(cams).max()) == 254
    for t in (0.4, 0.7):
        fg = binarize_like_reference(cams, t, relative_to_max=True)
        for v, f in zip(cams.numpy(), fg.numpy()):
            np.testing.assert_array_equal(f, ref_binarize(v, t, relative=True))


def test_binarize_nan_and_zero_maps_are_empty():
    maps = torch.stack([torch.full((3, 4), float('nan')), torch.zeros(3, 4)])
    assert not binarize_like_reference(maps, 0.0).any()
    assert not binarize_like_reference(maps, 0.4, relative_to_max=True).any()


@pytest.mark.parametrize('clamp', [True, False])
def test_boxes_from_real_image_maps(real_photo_paths, clamp):
    maps = real_score_maps(real_photo_paths[:6])
    means = maps.mean(dim=(-2, -1))
    boxes = boxes_from_scores(maps, means, box_clamp=clamp)
    rel = boxes_from_scores(maps, 0.4, relative_to_max=True, box_clamp=clamp)
    for v, m, b, r in zip(maps.numpy(), means.numpy(), boxes.numpy(), rel.numpy()):
        np.testing.assert_array_equal(b, ref_box_union(ref_binarize(v, m, False), clamp))
        np.testing.assert_array_equal(r, ref_box_union(ref_binarize(v, 0.4, True), clamp))
    assert boxes.any()


@pytest.mark.parametrize('clamp', [True, False])
@pytest.mark.parametrize('shape', SIZES)
def test_region_bbox_matches_loop(shape, clamp):
    special = special_masks()
    fitted = torch.zeros(len(special), *shape, dtype=torch.bool)
    h, w = min(shape[0], special.shape[1]), min(shape[1], special.shape[2])
    fitted[:, -h:, -w:] = special[:, -h:, -w:]  # keep the bottom/right edge contents
    masks = torch.cat([random_masks(shape, seed=5), fitted])
    box = region_bbox(masks, box_clamp=clamp)
    assert isinstance(box, RegionBox)
    for i, m in enumerate(masks.numpy()):
        ref = ref_region_bbox(m, clamp)
        got = tuple(int(c[i]) for c in box[:4])
        assert bool(box.valid[i]) == (ref is not None)
        assert got == (ref if ref is not None else (0, 0, 0, 0))


def test_region_bbox_edge_quirk_and_dtype():
    m = torch.zeros(2, 5, 6, dtype=torch.bool)
    m[0, 2:, 5] = True  # last column only: degenerate under the quirk
    m[1, 1:3, 1:4] = True
    box = region_bbox(m, box_clamp=True)
    assert box.valid.tolist() == [False, True]
    assert (box.x1.tolist(), box.y1.tolist(), box.x2.tolist(), box.y2.tolist()) == \
        ([0, 1], [0, 1], [0, 4], [0, 3])
    assert box.x1.dtype == torch.long
    loose = region_bbox(m, box_clamp=False)
    assert loose.valid.tolist() == [True, True] and loose.x2.tolist() == [6, 4]


def test_bad_inputs_raise():
    with pytest.raises(TypeError):
        connected_components(torch.zeros(3, 3))
    with pytest.raises(ValueError):
        connected_components(torch.zeros(3, 3, dtype=torch.bool), connectivity=6)
    with pytest.raises(ValueError):
        component_boxes_union(torch.zeros(3, dtype=torch.bool))
    with pytest.raises(TypeError):
        binarize_like_reference(torch.zeros(3, 3, dtype=torch.uint8), 0.5)
