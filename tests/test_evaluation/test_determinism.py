"""The determinism contract (docs/determinism.md).

One image's outputs must not depend on the images that share its batch, the
thread count or the CPU's code path beyond the stated tolerances; ties at
discrete decisions are the only excuse for larger differences, and the checks
that find them are themselves tested on hand-made numbers here.

``.ci/run`` runs this file (and the resume tests) again under other
instruction-set limits (``MKL_ENABLE_INSTRUCTIONS``, ``ONEDNN_MAX_CPU_ISA``).
"""
from functools import partial

import numpy as np
import pytest
import torch
from mmseg.structures import SegDataSample

from tagclip_mmseg.evaluation.determinism import (DECISION_TIE, PIXEL_TIE, SCORE_ATOL,
                                                  cam_box_margin, compare_tag_scores,
                                                  tag_decision_margin, unexplained_label_flips)
from tagclip_mmseg.testing.checkout import repo_root
from tagclip_mmseg.testing.models import build_labeler, build_tagger

pytestmark = pytest.mark.determinism

FG = ['cat', 'dog', 'person', 'car', 'tree house', 'boat', 'bird']
BG = ['ground', 'sky', 'wall']


# ------------------------------------------------------------ the checks
def test_compare_tag_scores_known_answers():
    ratio = 0.3  # threshold = min + 0.3 * (max - min)
    a = {'x': ([0.1, 0.5, 0.22], [1]), 'y': ([0.0, 1.0, 0.3], [1])}
    # y's class 2 sits exactly at its threshold 0.3: a flip there is a tie.
    b = {'x': ([0.1 + 5e-5, 0.5, 0.22], [1]), 'y': ([0.0, 1.0, 0.3 + 5e-5], [1, 2])}
    assert compare_tag_scores(a, b, ratio) == []
    # Beyond the tolerance.
    far = {'x': ([0.1 + 3 * SCORE_ATOL, 0.5, 0.22], [1]), 'y': a['y']}
    [msg] = compare_tag_scores(a, far, ratio)
    assert msg.startswith('x: scores differ by 0.0003')
    # A large score change is reported even when the tags it moves sit at a tie.
    flip = {'x': ([0.1, 0.5, 0.4], [1, 2]), 'y': a['y']}
    problems = compare_tag_scores(a, flip, ratio)
    assert any('scores differ' in p for p in problems)
    # Same scores, a tag that no score supports.
    wrong = {'x': ([0.1, 0.5, 0.22], [0, 1]), 'y': a['y']}
    assert compare_tag_scores(a, wrong, ratio) == ['x: tags [0] differ and are not at a tie']
    # An image with an internal tie is excused; missing images are not.
    assert compare_tag_scores(a, far, ratio, tied_images=['x']) == []
    assert 'only in the first' in compare_tag_scores(a, {'x': a['x']}, ratio)[0]


def test_tag_decision_margin_hand_computed():
    """One image, 4 patches (2x2), 2 foreground + 1 background class.

    Hand computation (ratios 0.4 tags, 0.25 CWR, 0.6 region):

    * p_final = (0.2, 0.7): t = 0.2 + 0.4 * 0.5 = 0.4, gaps 0.2 and 0.3 over
      a range of 0.5 -> 0.4.
    * p_ref in [0, 0.8]: theta = 0.2; p_local = (0.6, 0.8) -> (0.4, 0.6)/0.8,
      min 0.5. Both are candidates; normalised columns (0, 0.25, 0.5, 1) and
      (0, 0.5, 0.75, 1) against 0.6 -> min gap 0.1.
    * p_hat columns chosen so the DMAR margins are large except one value:
      column 0 = (0, 0.3, 0.6, 1.0) has mean 0.475, level trunc(121.125) =
      121; 255 * 0.6 = 153 is 31 from 122; mean*255 = 121.125 is 0.125 from
      an integer -> 0.125 / 255 = 4.9e-4, the smallest margin.
    """
    p_final = torch.tensor([[0.2, 0.7]])
    p_local = torch.tensor([[0.6, 0.8]])
    p_ref = torch.tensor([[[0.0, 0.0, 0.1], [0.15, 0.4, 0.1], [0.3, 0.6, 0.1],
                           [0.6, 0.8, 0.1]]])
    col = torch.tensor([0.0, 0.3, 0.6, 1.0])
    p_hat = torch.stack([col, col.flip(0), torch.tensor([0.0, 0.0, 0.2, 1.0])], dim=1)[None]
    out = dict(p_final=p_final, p_local=p_local, p_ref=p_ref, p_hat=p_hat)
    margin = tag_decision_margin(out, tag_ratio=0.4, cwr_ratio=0.25, cwr_region_thr=0.6)
    # Column 2 = (0, 0, 0.2, 1): mean 0.3, level trunc(76.5) = 76; values
    # 255 * (0, 0, 0.2, 1) = (0, 0, 51, 255) are >= 25 from 77; mean*255 =
    # 76.5 -> 0.5 from an integer. Column 1 like column 0.
    torch.testing.assert_close(margin, torch.tensor([0.125 / 255]), rtol=1e-3, atol=0)
    # Move a tag score onto its threshold: that decision now dominates.
    out['p_final'] = torch.tensor([[0.2, 0.7, 0.4 + 1e-6]])
    out['p_local'] = torch.tensor([[0.6, 0.8, 0.0]])
    out['p_ref'] = torch.cat([p_ref, torch.zeros(1, 4, 1)], dim=2)
    # (0, 0.5, 0.25, 1): level trunc(111.5625) = 111, gaps >= 15.5 and 0.4375.
    out['p_hat'] = torch.cat([p_hat, torch.tensor([0., 0.5, 0.25, 1.])[None, :, None]], dim=2)
    margin = tag_decision_margin(out, tag_ratio=0.4, cwr_ratio=0.25, cwr_region_thr=0.6)
    assert margin.item() < 1e-5


def test_cam_box_margin_hand_computed():
    """255 * (0.2, 0.5, 0.9999999) -> q = (51, 127, 254); ratio 0.4 -> level trunc(101.6) = 101.

    Boundary 102: gaps |51 - 102| = 51 and |127.5 - 102| = 25.5 -> 0.1 (the max is left out).
    """
    cams = torch.tensor([[[0.2, 0.5, 0.9999999]]])
    torch.testing.assert_close(cam_box_margin(cams, 0.4), torch.tensor([25.5 / 255]))
    # Second tag: q_max 254 again, 255 * v = 102.01 is 0.01 from the boundary 102.
    padded = torch.cat([cams, torch.tensor([[[0.4, 102.01 / 255, 0.9999999]]])], dim=1)
    assert cam_box_margin(padded, 0.4).item() < 1e-3
    valid = torch.tensor([[True, False]])
    torch.testing.assert_close(cam_box_margin(padded, 0.4, valid), torch.tensor([25.5 / 255]))


def test_unexplained_label_flips():
    labels_a = torch.tensor([[0, 1], [2, 2]])
    labels_b = torch.tensor([[0, 2], [1, 2]])
    probs = torch.zeros(3, 2, 2)
    probs[:, 0, 1] = torch.tensor([0.1, 0.5, 0.5 - PIXEL_TIE / 2])  # a tie: excused
    probs[:, 1, 0] = torch.tensor([0.1, 0.2, 0.6])  # no tie: unexplained
    flips = unexplained_label_flips(labels_a, labels_b, probs, probs)
    assert flips.tolist() == [[False, False], [True, False]]


# ------------------------------------------------- the models under batching
def _photos(num: int, hw=(48, 64)) -> torch.Tensor:
    """``num`` normalised test photos of one size (the demo's, cycled and flipped)."""
    import glob
    import os.path as osp

    from PIL import Image
    root = osp.join(repo_root(__file__), 'demo', 'images')
    paths = sorted(glob.glob(osp.join(root, '*.jpg')) + glob.glob(osp.join(root, '*.png')))
    out = []
    for i in range(num):
        with Image.open(paths[i % len(paths)]) as im:
            im = im.convert('RGB').resize(hw[::-1], Image.BICUBIC)
            if (i // len(paths)) % 2:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            arr = np.asarray(im, dtype=np.float32) / 255.
        out.append(torch.from_numpy((arr - 0.45) / 0.27).permute(2, 0, 1))
    return torch.stack(out)


#: ``_tagger(checkpoint, work_dir=tmp_path, **settings)``.
_tagger = partial(build_tagger, class_names=FG, background_words=BG,
                  templates=('a photo of a {}.', ), vote_k=3, avg_layers=(7, 9, 10),
                  cwr_ratio=0.35, tag_ratio=0.65, fusion_lambda=0.3, cwr_crop_size=64)
#: ``_labeler(checkpoint, work_dir=tmp_path, **settings)``.
_labeler = partial(build_labeler, class_names=FG, background_words=BG, caa_layers=range(4, 11),
                   caa_box_thr=0.45)


def test_forward_batch_size_by_device(deep_tiny_clip_path, tmp_path):
    model = _tagger(deep_tiny_clip_path, work_dir=tmp_path)
    assert model.forward_batch_size(torch.device('cpu'), 8) == 1
    assert model.forward_batch_size(torch.device('cuda'), 8) == 8
    model.images_per_forward = 3
    assert model.forward_batch_size(torch.device('cpu'), 8) == 3
    for bad in (0, -1, 1.5, True, '2'):
        with pytest.raises(ValueError, match='images_per_forward'):
            _tagger(deep_tiny_clip_path, work_dir=tmp_path, images_per_forward=bad)


@pytest.mark.parametrize('quirks', ['reference', 'fixed'])
def test_tagger_outputs_do_not_depend_on_the_batch(deep_tiny_clip_path, tmp_path, quirks):
    """Batch 1 against one batch of 8 (forced on the CPU), every stage."""
    images = _photos(8)
    model = _tagger(deep_tiny_clip_path, work_dir=tmp_path, quirks=quirks)
    single = [model.tag(images[i:i + 1]) for i in range(len(images))]
    batched = model.tag(images)
    margins = torch.cat([tag_decision_margin(vars(o), model.tag_ratio, model.cwr_ratio,
                                             model.cwr_region_thr) for o in single])
    tied = {str(i) for i in range(len(images)) if margins[i] < DECISION_TIE}
    for key in ('p_coarse', 'p_hat', 'p_ref', 'p_local', 'p_global', 'p_final'):
        one = torch.cat([getattr(o, key) for o in single])
        delta = (one - getattr(batched, key)).abs().flatten(1).amax(1)
        loose = [i for i in range(len(images)) if delta[i] > SCORE_ATOL and str(i) not in tied]
        assert not loose, (key, delta.tolist(), margins.tolist())
    records = [{str(i): (o.p_final[0].tolist(), o.tags[0].nonzero().flatten().tolist())
                for i, o in enumerate(single)},
               {str(i): (batched.p_final[i].tolist(),
                         batched.tags[i].nonzero().flatten().tolist())
                for i in range(len(images))}]
    assert compare_tag_scores(*records, model.tag_ratio, tied_images=sorted(tied)) == []


def test_tagger_predict_is_thread_count_invariant(deep_tiny_clip_path, tmp_path):
    """One image per forward (the CPU default) in 1 and in 2 threads."""
    from mmpretrain.structures import DataSample
    images = _photos(4)
    model = _tagger(deep_tiny_clip_path, work_dir=tmp_path)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            samples = model.predict(list(images), [DataSample() for _ in images])
            runs.append({str(i): (s.pred_score.tolist(), s.pred_label.tolist())
                         for i, s in enumerate(samples)})
    finally:
        torch.set_num_threads(threads)
    assert compare_tag_scores(*runs, model.tag_ratio) == []


def _labels_and_probs(model, images, tags, hw):
    """Full-size labels and their argmax channels, via the model's own steps."""
    cams, _ = model.compute_cams(images, tags)
    out = []
    for i, t in enumerate(tags):
        up = model.upsample(cams[i][:len(t)], hw)
        probs = torch.cat([1 - up.amax(dim=0, keepdim=True), up])
        out.append((model.cams_to_label(up, t, None), probs))
    return out


@pytest.mark.parametrize('quirks', ['reference', 'fixed'])
def test_masks_do_not_depend_on_the_batch(deep_tiny_clip_path, tmp_path, quirks):
    """A pixel may flip only where two channels tie, or on an image whose CAM box decision is tied.

    Through ``predict`` too (one image per forward on the CPU against a forced batch of 8).
    """
    images = _photos(8)
    tags = [[0, 2], [1], [3, 4, 6], [5], [0, 1, 2, 3], [6], [2, 4], [1, 5]]
    hw = (45, 70)
    model = _labeler(deep_tiny_clip_path, work_dir=tmp_path, quirks=quirks)
    single = [_labels_and_probs(model, images[i:i + 1], tags[i:i + 1], hw)[0]
              for i in range(len(images))]
    batched = _labels_and_probs(model, images, tags, hw)
    vit = model.clip.visual
    tied = set()
    for i, t in enumerate(tags):
        with torch.no_grad():
            hidden = vit.forward_until(images[i:i + 1], vit.num_layers - 1,
                                       round_pos_embed_fp16=model.round_pos_embed_fp16).hidden
        cams, _ = model.grad_cam(hidden, torch.zeros(len(t), dtype=torch.long),
                                 torch.tensor(t), [t])
        if cam_box_margin(cams[None], model.caa_box_thr).item() < DECISION_TIE:
            tied.add(i)
    for i, ((la, pa), (lb, pb)) in enumerate(zip(single, batched)):
        flips = unexplained_label_flips(la, lb, pa, pb)
        assert i in tied or not flips.any(), (i, int(flips.sum()))

    def predict(images_per_forward):
        model.images_per_forward = images_per_forward
        samples = []
        for t in tags:
            s = SegDataSample()
            s.set_metainfo(dict(tags=t, ori_shape=hw, img_path='x.jpg'))
            samples.append(s)
        return [s.pred_sem_seg.data[0] for s in model.predict(list(images), samples)]

    for i, (a, b) in enumerate(zip(predict(None), predict(8))):
        flips = unexplained_label_flips(a, b, single[i][1], batched[i][1])
        assert i in tied or not flips.any(), (i, int(flips.sum()))
