"""CLIP-ES pseudo-labeler against a per-tag loop implementation of docs/method.md.

``reference_cams`` (tagclip_mmseg/testing/reference.py) follows docs/method.md,
"CLIP-ES pseudo masks from tags" literally: one backward pass per tag, OpenCV contours for the box
of each tag, the affinity applied tag by tag, and ``F.interpolate`` to the original size.
"""
from functools import partial

import pytest
import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from tagclip_mmseg.resume import predict_or_restore
from tagclip_mmseg.testing import models as testing_models
from tagclip_mmseg.testing.reference import reference_cams

FG = ['cat', 'dog', 'person', 'car', 'tree house']
BG = ['ground', 'sky']


#: ``build_labeler(checkpoint, quirks, tmp_path, **settings)``.
build_labeler = partial(testing_models.build_labeler, class_names=FG, background_words=BG,
                        caa_layers=(0, 1, 2), return_cams=True)


def make_samples(tag_lists, ori_hw):
    samples = []
    for tags in tag_lists:
        s = SegDataSample()
        s.set_metainfo(dict(tags=tags, ori_shape=ori_hw, img_path='x.jpg'))
        samples.append(s)
    return samples


@pytest.mark.classic
@pytest.mark.parametrize('quirks', ['reference', 'fixed', dict(box_clamp=False),
                                    dict(preset='fixed', cam_fp16=True)],
                         ids=['reference', 'fixed', 'no-box-clamp', 'fixed+cam-fp16'])
@pytest.mark.parametrize('caa_layers', [(0, 1, 2), (1, )])
def test_labeler_matches_reference(tiny_clip_path, tmp_path, quirks, caa_layers):
    # a box threshold that is neither VOC's 0.4 nor COCO's 0.7: the reference
    # reads it from the model
    model = build_labeler(tiny_clip_path, quirks, tmp_path, caa_layers=caa_layers,
                          caa_box_thr=0.55)
    torch.manual_seed(0)
    images = torch.randn(3, 3, 48, 64)
    tag_lists = [[0, 2], [4], [1, 3, 4]]
    ori_hw = (45, 70)
    samples = model.predict(list(images), make_samples(tag_lists, ori_hw))
    for i, s in enumerate(samples):
        ref_cams, ref_label = reference_cams(model, images[i], tag_lists[i], ori_hw)
        torch.testing.assert_close(s.cams.float(), ref_cams, atol=2e-3, rtol=0)
        agree = (s.pred_sem_seg.data[0] == ref_label).float().mean()
        assert agree > 0.999, agree
        assert s.pred_sem_seg.data.shape == (1, ) + ori_hw


def test_labeler_runs_under_no_grad(tiny_clip_path, tmp_path):
    """Mmengine's test loop wraps everything in no_grad; Grad-CAM must still work."""
    model = build_labeler(tiny_clip_path, 'fixed', tmp_path)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        s = model.predict(list(images), make_samples([[1]], (32, 32)))[0]
    assert s.cams.float().max() > 0


def test_no_tags_gives_background(tiny_clip_path, tmp_path):
    model = build_labeler(tiny_clip_path, 'fixed', tmp_path)
    samples = model.predict([torch.randn(3, 32, 48), torch.randn(3, 32, 48)],
                            make_samples([[], [2]], (30, 40)))
    assert (samples[0].pred_sem_seg.data == 0).all()
    assert set(samples[1].pred_sem_seg.data.unique().tolist()) <= {0, 3}


def test_bad_tags_raise(tiny_clip_path, tmp_path):
    model = build_labeler(tiny_clip_path, 'fixed', tmp_path)
    with pytest.raises(ValueError, match='outside'):
        model.predict([torch.randn(3, 32, 32)], make_samples([[7]], (32, 32)))


def test_without_background_and_label_map(tiny_clip_path, tmp_path):
    lut = [10, 11, 12, 13, 14]
    model = build_labeler(tiny_clip_path, 'fixed', tmp_path, with_background=False,
                          label_map=lut)
    s = model.predict([torch.randn(3, 32, 32)], make_samples([[1, 3]], (32, 32)))[0]
    assert set(s.pred_sem_seg.data.unique().tolist()) <= {11, 13}


@pytest.mark.classic
def test_tagger_in_the_same_pass(tiny_clip_path, tmp_path):
    tagger = dict(type='TagCLIP', clip=dict(checkpoint=tiny_clip_path), class_names=FG,
                  background_words=BG, avg_layers=(0, 1), vote_k=2,
                  templates=('a photo of a {}.', ), text_cache_dir=str(tmp_path / 'cache'))
    model = build_labeler(tiny_clip_path, 'fixed', tmp_path, tagger=tagger)
    samples = [SegDataSample(metainfo=dict(ori_shape=(32, 48))) for _ in range(2)]
    torch.manual_seed(5)
    images = torch.randn(2, 3, 32, 48)
    out = model.predict(list(images), samples)
    expected = model.tagger.tag(images).tags  # the tagger on its own
    for s, tags in zip(out, expected):
        assert s.metainfo['tags'] == tags.nonzero().flatten().tolist()
        assert isinstance(s.pred_sem_seg, PixelData)
        assert set(s.pred_sem_seg.data.unique().tolist()) <= {0} | {t + 1 for t in
                                                                  s.metainfo['tags']}


def test_load_error_samples_are_skipped(tiny_clip_path, tmp_path):
    model = build_labeler(tiny_clip_path, 'fixed', tmp_path)
    samples = make_samples([[0], [1]], (20, 20))
    samples[0].set_metainfo(dict(load_error='truncated file'))
    # ResumableTestLoop keeps the failed sample away from the model and marks it.
    out = predict_or_restore(model, dict(inputs=[torch.randn(3, 16, 16), torch.randn(3, 32, 32)],
                                         data_samples=samples))
    assert (out[0].pred_sem_seg.data == 255).all()
    assert out[1].pred_sem_seg.data.shape == (1, 20, 20)


@pytest.mark.classic
def test_bf16_autocast_runs_the_batched_backward(tiny_clip_path, tmp_path):
    """Under ``autocast='bf16'`` the hand-written Grad-CAM backward and the label maps still work.

    CAMs stay in [0, 1].
    """
    torch.manual_seed(0)
    images = list(torch.randn(2, 3, 32, 48))
    tag_lists = [[0, 2], [1]]
    model = build_labeler(tiny_clip_path, 'reference', tmp_path, autocast='bf16')
    seen = []
    model.clip.visual.transformer.resblocks[0].mlp.c_fc.register_forward_hook(
        lambda mod, inp, out: seen.append(out.dtype))
    for s, tags in zip(model.predict(images, make_samples(tag_lists, (32, 48))), tag_lists):
        label = s.pred_sem_seg.data
        assert label.shape == (1, 32, 48)
        assert set(label.unique().tolist()) <= {0, 255} | {t + 1 for t in tags}
        cams = s.cams.float()
        assert torch.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-3
    assert torch.bfloat16 in seen



def test_bf16_run_first_leaves_the_fp32_cam_prompt_cache_exact(tiny_clip_path, tmp_path):
    """The CAM prompts' cache: bf16 then fp32 on one cache equals fp32 on a cold one."""
    images = list(torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(5)))
    tag_lists = [[0, 2], [1]]
    shared, cold = str(tmp_path / 'shared'), str(tmp_path / 'cold')
    build_labeler(tiny_clip_path, 'reference', text_cache_dir=shared,
                  autocast='bf16').predict(images, make_samples(tag_lists, (32, 48)))
    warm = build_labeler(tiny_clip_path, 'reference', text_cache_dir=shared)
    fresh = build_labeler(tiny_clip_path, 'reference', text_cache_dir=cold)
    text = [m.text_embeddings(m.class_names + m.background_words, m.templates)
            for m in (warm, fresh)]
    assert torch.equal(*text)
    outs = [m.predict(images, make_samples(tag_lists, (32, 48))) for m in (warm, fresh)]
    for a, b in zip(*outs):
        assert torch.equal(a.cams, b.cams)
        assert torch.equal(a.pred_sem_seg.data, b.pred_sem_seg.data)


def test_bf16_autocast_cam_head_runs_in_fp32(tiny_clip_path, tmp_path, precision_spy):
    """Under ``autocast='bf16'`` only the ViT runs in bf16.

    The tag softmax, the CAM normalisation, the affinity, the refinement and the label argmax see
    fp32 inputs with autocast off; the in-pass tagger inherits the option.
    """
    from tagclip_mmseg.models.pseudo_labelers import CLIPESPseudoLabeler
    from tagclip_mmseg.models.pseudo_labelers import clip_es as module
    images = list(torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(6)))
    model = build_labeler(tiny_clip_path, 'reference', tmp_path, autocast='bf16')
    seen = []
    model.clip.visual.transformer.resblocks[0].mlp.c_fc.register_forward_hook(
        lambda mod, inp, out: seen.append(out.dtype))
    for name in ('normalize_grad_cam', 'affinity_from_attention', 'caa_refine'):
        precision_spy.wrap(module, name)
    precision_spy.wrap(CLIPESPseudoLabeler, 'cams_to_label')
    precision_spy.softmax_over(len(FG) + len(BG))  # 7 classes; the maps have 13 tokens
    model.predict(images, make_samples([[0, 2], [1]], (48, 64)))
    assert set(seen) == {torch.bfloat16}
    precision_spy.assert_fp32(['normalize_grad_cam', 'affinity_from_attention', 'caa_refine',
                               'cams_to_label', 'softmax'])
    tagged = build_labeler(tiny_clip_path, 'reference', tmp_path, autocast='bf16',
                           tagger=dict(type='TagCLIP', clip=dict(checkpoint=tiny_clip_path),
                                       class_names=FG, avg_layers=(0, 1), vote_k=2))
    assert tagged.tagger.autocast_dtype == torch.bfloat16


def test_grad_cam_normalisation_hand_computed():
    """``(x - min) / (max + 1e-7)`` once (fixed) or twice (reference), by hand.

    A raw CAM spanning 3e-7: the first pass divides (0, 1e-7, 3e-7) by 4e-7,
    giving (0, 0.25, 0.75); the second divides by 0.75 + 1e-7.
    """
    from tagclip_mmseg.models.ops import normalize_grad_cam
    raw = torch.tensor([[2e-7, 3e-7, 5e-7]], dtype=torch.float64)
    once = normalize_grad_cam(raw, grad_cam_double_norm=False)
    twice = normalize_grad_cam(raw, grad_cam_double_norm=True)
    torch.testing.assert_close(once, torch.tensor([[0., 0.25, 0.75]], dtype=torch.float64))
    torch.testing.assert_close(
        twice, torch.tensor([[0., 0.25 / (0.75 + 1e-7), 0.75 / (0.75 + 1e-7)]],
                            dtype=torch.float64))
    # A large range: both passes leave the maximum at 1 - O(1e-7).
    big = normalize_grad_cam(torch.tensor([[0., 2., 4.]]), True)
    assert abs(big.max().item() - 1) < 1e-6


class _ScaledRelu:
    """``torch.nn.functional`` with ``relu`` scaled, to shrink raw CAMs."""

    def __init__(self, scale):
        self.scale = scale

    def __getattr__(self, name):
        import torch.nn.functional as F
        return getattr(F, name)

    def relu(self, x):
        import torch.nn.functional as F
        return F.relu(x) * self.scale


@pytest.mark.parametrize('quirks', ['reference', 'fixed', dict(grad_cam_double_norm=False)],
                         ids=['reference', 'fixed', 'single-norm'])
def test_weak_tag_cam_is_normalised_like_the_reference(tiny_clip_path, tmp_path, monkeypatch,
                                                       quirks):
    """A raw CAM whose range is below 1e-6 (a weak tag).

    The model and the per-tag reference both see raw CAMs scaled into a range
    of a few 1e-7; ``quirks.grad_cam_double_norm`` must rescale twice
    (maximum back at ~1), without it once (maximum visibly below 1), and the
    refined CAMs must match the reference's either way. The third case
    switches that one field of the reference preset.
    """
    import tagclip_mmseg.models.pseudo_labelers.clip_es as clip_es
    import tagclip_mmseg.testing.reference as reference
    model = build_labeler(tiny_clip_path, quirks, tmp_path, caa_layers=(0, 1, 2))
    torch.manual_seed(1)
    images = torch.randn(2, 3, 48, 64)
    tag_lists = [[1, 3], [2]]
    vit = model.clip.visual
    with torch.no_grad():
        hidden = vit.forward_until(images, vit.num_layers - 1,
                                   round_pos_embed_fp16=model.round_pos_embed_fp16).hidden
    pair_img, pair_cls = torch.tensor([0, 0, 1]), torch.tensor([1, 3, 2])
    # Scale the raw CAMs so that the widest one spans exactly 3e-7.
    monkeypatch.setattr(clip_es, 'normalize_grad_cam', lambda cam, grad_cam_double_norm: cam)
    raw, _ = model.grad_cam(hidden, pair_img, pair_cls, tag_lists)
    monkeypatch.undo()
    scale = 3e-7 / (raw.amax(dim=1) - raw.amin(dim=1)).max().item()
    monkeypatch.setattr(clip_es, 'F', _ScaledRelu(scale))
    monkeypatch.setattr(reference, 'F', _ScaledRelu(scale))
    cams, _ = model.grad_cam(hidden, pair_img, pair_cls, tag_lists)
    peak = cams.amax(dim=1)
    if model.quirks.grad_cam_double_norm:  # 0.75 / (0.75 + 1e-7) for the widest; all near 1
        assert (peak > 0.99).all(), peak
    else:  # once: 3e-7 / 4e-7 for the widest, narrower ones lower still
        assert abs(peak.max().item() - 0.75) < 1e-3 and (peak < 0.76).all(), peak
    ori_hw = (40, 66)
    samples = model.predict(list(images), make_samples(tag_lists, ori_hw))
    for i, s in enumerate(samples):
        ref_cams, _ = reference_cams(model, images[i], tag_lists[i], ori_hw)
        torch.testing.assert_close(s.cams.float(), ref_cams, atol=2e-3, rtol=0)


def test_tag_pairs_hand_computed():
    from tagclip_mmseg.models.pseudo_labelers.clip_es import tag_pairs
    pairs = tag_pairs([[2, 0], [], [1]], torch.device('cpu'))
    assert pairs.img.tolist() == [0, 0, 2]
    assert pairs.cls.tolist() == [2, 0, 1]
    assert pairs.slot.tolist() == [0, 1, 0]
    assert all(t.numel() == 0 for t in tag_pairs([[], []], torch.device('cpu')))


def test_labeler_without_vocabulary_until_one_is_set(tiny_clip_path, tmp_path):
    """``class_names=None`` is allowed, as for the tagger.

    A call before a vocabulary arrives says what to do.
    """
    model = testing_models.build_labeler(tiny_clip_path, 'reference', tmp_path,
                                         background_words=BG, caa_layers=(0, 1, 2))
    assert model.class_names is None and model.num_classes == 0
    images = torch.randn(1, 3, 32, 32)
    with pytest.raises(RuntimeError, match='no vocabulary.*VocabularyHook'):
        model.predict(list(images), make_samples([[0]], (32, 32)))
    model.set_vocabulary(FG)
    out = model.predict(list(images), make_samples([[0]], (32, 32)))[0]
    assert out.pred_sem_seg.data.shape == (1, 32, 32)


def test_labeler_tensor_mode_returns_logits(tiny_clip_path, tmp_path):
    """(B, C + 1, H, W) at the input size.

    Channel 0 is ``1 - max`` of the tag CAMs, channel ``c + 1`` the CAM of tag ``c``, zeros
    elsewhere.
    """
    model = build_labeler(tiny_clip_path, 'fixed', tmp_path)
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(6))
    tag_lists = [[1, 3], [4]]
    logits = model(images, make_samples(tag_lists, (32, 48)), mode='tensor')
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, len(FG) + 1, 32, 48)
    cams, _ = model.compute_cams(images, tag_lists)
    for b, tags in enumerate(tag_lists):
        up = model.upsample(cams[b][:len(tags)], (32, 48))
        torch.testing.assert_close(logits[b, [t + 1 for t in tags]], up)
        torch.testing.assert_close(logits[b, 0], 1 - up.amax(0))
        untagged = [c + 1 for c in range(len(FG)) if c not in tags]
        assert not logits[b, untagged].any()
