"""CWR's candidate choice, regions, early exit and fusion on a hand-made map.

``TagCLIP.reidentify`` gets a refined-score map written by hand (2 images,
a 3 x 4 patch grid, 4 foreground classes and 1 background word) and a
stand-in for the crop classifier that returns known global scores, so every
expected number below is computed by hand from docs/method.md,
"CWR: class-wise reidentification":

* candidates: ``p_local > mi + r * (ma - mi)`` over the image's whole map,
  here ``mi = 0``, ``ma = 1`` and ``r = cwr_ratio = 0.3``, so ``theta = 0.3``;
* region: min-max normalised column ``> cwr_region_thr = 0.4``, its tight box;
  ``quirks.box_clamp`` clamps the exclusive right/bottom ends to ``W - 1 = 3``
  and ``H - 1 = 2``;
* ``quirks.cwr_early_exit``: the first candidate with a degenerate box stops
  CWR for the image's later candidates (classes in increasing order);
  without it only that class is skipped;
* fusion ``lambda * p_local + (1 - lambda) * p_global`` with ``lambda = 0.3``.
"""
import pytest
import torch

H, W = 3, 4
LAM, R, REGION_THR = 0.3, 0.3, 0.4


def column(values: dict, rest: float) -> torch.Tensor:
    """A (H*W,) score column: ``rest`` everywhere but at the given (y, x)."""
    col = torch.full((H, W), rest)
    for (y, x), v in values.items():
        col[y, x] = v
    return col.flatten()


def hand_made_map() -> torch.Tensor:
    """(2, 12, 5) refined scores; comments give p_local and the region."""
    img0 = [
        # max 0.9 > 0.3: candidate. Normalised (v - 0.1) / 0.8: 1, .875, .75,
        # .625 and 0.4375 at (2, 2), inside the region only because the
        # threshold is 0.4, not 0.5. Box x 0..3, y 0..3; clamped y2 = 2.
        column({(0, 0): .9, (0, 1): .8, (1, 0): .7, (1, 1): .6, (2, 2): .45}, .1),
        # constant 0.8: candidate, but a constant map has no region (0/0),
        # a degenerate box under any quirks.
        column({}, .8),
        # max 0.5: a candidate at theta = 0.3 (not at 0.7, the mirrored
        # threshold max - r * (max - min)). Box x 1..2, y 0..2.
        column({(0, 1): .5, (1, 1): .5}, 0.),
        # max 0.25 <= 0.3: not a candidate.
        column({(0, 0): .25}, .2),
        # background word: sets the image's max (1) and min (0).
        column({(2, 3): 1.}, 0.),
    ]
    img1 = [
        # max 0.2: not a candidate.
        column({(0, 0): .2}, .1),
        # max 0.7: candidate, box x 0..2, y 1..2.
        column({(1, 0): .7, (1, 1): .6}, .05),
        # max 0.6: candidate; region in the last column: box x 3..4, which
        # the reference clamp makes x 3..3, degenerate.
        column({(0, 3): .6, (1, 3): .6}, .1),
        # max 0.4: candidate (not at the mirrored 0.7), box x 0..2, y 0..1.
        column({(0, 0): .4, (0, 1): .4}, 0.),
        column({(2, 3): 1.}, 0.),
    ]
    return torch.stack([torch.stack(img0, dim=1), torch.stack(img1, dim=1)])


#: Global (crop) scores per image over all 5 classes, what the stand-in
#: classifier returns for a crop of that image.
P_GLOBAL = torch.tensor([[.11, .12, .13, .14, .15], [.21, .22, .23, .24, .25]])
P_LOCAL = torch.tensor([[.9, .8, .5, .25], [.2, .7, .6, .4]])


def fused(b: int, c: int) -> float:
    return LAM * P_LOCAL[b, c].item() + (1 - LAM) * P_GLOBAL[b, c].item()


#: quirks -> (reidentified (image, class) pairs in order, their boxes x1 y1 x2 y2)
EXPECTED = {
    # image 0: class 0 done; class 1 degenerate -> stop (class 2 skipped);
    # image 1: class 1 done; class 2 degenerate after clamping -> stop.
    'reference': ([(0, 0), (1, 1)], [(0, 0, 3, 2), (0, 1, 2, 2)]),
    # fixed: only the constant class 1 of image 0 is skipped.
    'fixed': ([(0, 0), (0, 2), (1, 1), (1, 2), (1, 3)],
              [(0, 0, 3, 3), (1, 0, 2, 2), (0, 1, 2, 2), (3, 0, 4, 2), (0, 0, 2, 1)]),
    # One field switched, the other kept: each changes only its own behaviour.
    # No clamp, early exit kept: image 0 still stops at class 1, its box 0
    # keeps y2 = 3; image 1's last-column box x 3..4 is valid, so no stop.
    'no-box-clamp': ([(0, 0), (1, 1), (1, 2), (1, 3)],
                     [(0, 0, 3, 3), (0, 1, 2, 2), (3, 0, 4, 2), (0, 0, 2, 1)]),
    # Clamp kept, no early exit: the degenerate boxes (image 0 class 1, image
    # 1 class 2 after clamping) are skipped, later candidates still run.
    'no-early-exit': ([(0, 0), (0, 2), (1, 1), (1, 3)],
                      [(0, 0, 3, 2), (1, 0, 2, 2), (0, 1, 2, 2), (0, 0, 2, 1)]),
}

#: quirks= argument of each case of EXPECTED.
QUIRKS = {'reference': 'reference', 'fixed': 'fixed',
          'no-box-clamp': dict(box_clamp=False), 'no-early-exit': dict(cwr_early_exit=False)}


@pytest.mark.parametrize('case', list(EXPECTED))
def test_cwr_early_exit_candidates_boxes_and_fusion(tiny_clip_path, tmp_path, monkeypatch, case):
    from tagclip_mmseg.models.taggers import TagCLIP
    tagger = TagCLIP(clip=dict(checkpoint=tiny_clip_path), class_names=['a', 'b', 'c', 'd'],
                     background_words=['e'], templates=('{}', ), vote_k=2, avg_layers=(0, 1),
                     cwr_ratio=R, cwr_region_thr=REGION_THR, fusion_lambda=LAM, tag_ratio=0.65,
                     quirks=QUIRKS[case], cwr_batch_size=2, text_cache_dir=str(tmp_path)).eval()
    p_ref = hand_made_map()
    p_local = p_ref[..., :4].amax(dim=1)
    torch.testing.assert_close(p_local, P_LOCAL)  # the comments above are right
    seen = []

    def crop_scores(images, region, img_idx, map_idx, boxes, text, vocabulary=None):
        seen.extend(zip(img_idx.tolist(), (map_idx % 4).tolist(), map(tuple, boxes.tolist())))
        return P_GLOBAL[img_idx]

    monkeypatch.setattr(tagger, '_crop_scores', crop_scores)
    images = torch.zeros(2, 3, 16 * H, 16 * W)
    p_final, done, p_global = tagger.reidentify(images, p_ref, p_local, (H, W),
                                                tagger.classifier())

    pairs, boxes = EXPECTED[case]
    assert [(b, c) for b, c, _ in seen] == pairs
    assert [box for _, _, box in seen] == boxes
    expected_done = torch.zeros(2, 4, dtype=torch.bool)
    expected = P_LOCAL.clone()
    expected_global = torch.zeros(2, 4)
    for b, c in pairs:
        expected_done[b, c] = True
        expected[b, c] = fused(b, c)
        expected_global[b, c] = P_GLOBAL[b, c]
    assert torch.equal(done, expected_done)
    torch.testing.assert_close(p_final, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(p_global, expected_global, atol=0, rtol=0)


def test_cwr_region_excludes_patches_at_exactly_the_threshold(tiny_clip_path, tmp_path,
                                                              monkeypatch):
    """The region is the normalised map strictly above ``cwr_region_thr``.

    Class 0's column is already normalised (min 0, max 1) with values
    {0, 0.5, 1}: 1 at (0, 0) and 0.5 at (2, 3). With the threshold at 0.5 the
    region is the single patch (0, 0), box x 0..1, y 0..1 (exclusive ends,
    no clamp); a ``>=`` would take in (2, 3) and give the box x 0..4, y 0..3.
    """
    from tagclip_mmseg.models.taggers import TagCLIP
    tagger = TagCLIP(clip=dict(checkpoint=tiny_clip_path), class_names=['a', 'b', 'c', 'd'],
                     background_words=['e'], templates=('{}', ), vote_k=2, avg_layers=(0, 1),
                     cwr_ratio=R, cwr_region_thr=0.5, fusion_lambda=LAM, quirks='fixed',
                     text_cache_dir=str(tmp_path)).eval()
    thr = tagger.cwr_region_thr
    p_ref = torch.stack([column({(0, 0): 1., (2, 3): thr}, 0.)]
                        + [column({}, .125)] * 3 + [column({}, 0.)], dim=1)[None]
    p_local = p_ref[..., :4].amax(dim=1)
    assert p_local.tolist() == [[1., .125, .125, .125]]  # only class 0 is above theta = R
    seen = []

    def crop_scores(images, region, img_idx, map_idx, boxes, text, vocabulary=None):
        seen.extend(zip((map_idx % 4).tolist(), map(tuple, boxes.tolist())))
        return P_GLOBAL[img_idx]

    monkeypatch.setattr(tagger, '_crop_scores', crop_scores)
    tagger.reidentify(torch.zeros(1, 3, 16 * H, 16 * W), p_ref, p_local, (H, W),
                      tagger.classifier())
    assert seen == [(0, (0, 0, 1, 1))]
