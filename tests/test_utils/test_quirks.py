"""The one quirk switch: presets, the resolver, the removed keywords.

Per-quirk behaviour is tested where the quirk lives
(test_models/test_taggers/test_tagclip_cwr.py: ``box_clamp`` and
``cwr_early_exit`` one at a time; test_models/test_pseudo_labelers/test_clip_es.py:
``grad_cam_double_norm``; test_models/test_clip/test_pos_embed.py:
``pos_embed_fp16``; test_evaluation/test_multilabel_metrics.py:
``empty_class_zero``; test_models/test_pseudo_labelers/test_crf.py:
``crf_reference_image``). Here: what ``quirks=`` accepts, and that the
removed ``mode=`` / ``image_mode=`` / ``empty_class_mode=`` / ``--mode`` are
refused with an error that names them.
"""
import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch
from mmpretrain.structures import DataSample

from tagclip_mmseg.evaluation import TaggingMetric
from tagclip_mmseg.resume import model_settings, resume_fingerprint
from tagclip_mmseg.utils.cli import add_quirks_args, quirks_from_args
from tagclip_mmseg.utils.quirks import QUIRK_PRESETS, Quirks, resolve_quirks

FIELDS = ('cwr_early_exit', 'box_clamp', 'crf_reference_image', 'empty_class_zero',
          'pos_embed_fp16', 'cam_fp16', 'grad_cam_double_norm')
TAGGER = dict(class_names=['cat', 'dog', 'car'], background_words=['sky'],
              templates=('a photo of a {}.', ), vote_k=2, avg_layers=(0, 1), cwr_crop_size=32)
LABELER = dict(class_names=['cat', 'dog', 'car'], background_words=['sky'],
               templates=('a photo of a {}.', ), caa_layers=(0, 1, 2))


# ------------------------------------------------------------- the dataclass
def test_presets_field_values():
    assert Quirks.field_names() == FIELDS
    assert Quirks() == Quirks.reference()
    assert all(getattr(Quirks.reference(), f) is True for f in FIELDS)
    assert all(getattr(Quirks.fixed(), f) is False for f in FIELDS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Quirks.reference().box_clamp = False


def test_resolver_accepts_a_name_a_dict_or_a_quirks():
    assert resolve_quirks('reference') == Quirks.reference()
    assert resolve_quirks('fixed') == Quirks.fixed()
    one_off = resolve_quirks(dict(box_clamp=False))  # overrides the reference preset
    assert one_off == dataclasses.replace(Quirks.reference(), box_clamp=False)
    one_on = resolve_quirks(dict(preset='fixed', cam_fp16=True))
    assert one_on == dataclasses.replace(Quirks.fixed(), cam_fp16=True)
    assert resolve_quirks(dict(preset='fixed')) == Quirks.fixed()
    q = Quirks(box_clamp=False)
    assert resolve_quirks(q) is q


@pytest.mark.parametrize('bad, names', [
    ('faithful', QUIRK_PRESETS), ('clean', QUIRK_PRESETS), (dict(preset='exact'), QUIRK_PRESETS),
    (dict(box_clamp=False, clamp=True), FIELDS), (42, FIELDS)])
def test_resolver_errors_name_the_valid_choices(bad, names):
    with pytest.raises(ValueError) as err:
        resolve_quirks(bad)
    assert all(repr(n) in str(err.value) for n in names), str(err.value)


def test_non_boolean_field_is_refused():
    with pytest.raises(ValueError, match='box_clamp must be True or False'):
        resolve_quirks(dict(box_clamp=1))
    with pytest.raises(ValueError, match='cam_fp16'):
        Quirks(cam_fp16='yes')


# ------------------------------------------------------------------- models
def _tagger(ckpt, tmp_path, **kw):
    from tagclip_mmseg.models.taggers import TagCLIP
    return TagCLIP(clip=dict(checkpoint=ckpt), text_cache_dir=str(tmp_path / 'cache'),
                   **TAGGER, **kw).eval()


def _labeler(ckpt, tmp_path, **kw):
    from tagclip_mmseg.models.pseudo_labelers import CLIPESPseudoLabeler
    return CLIPESPseudoLabeler(clip=dict(checkpoint=ckpt), text_cache_dir=str(tmp_path / 'cache'),
                               **LABELER, **kw).eval()


def test_models_store_the_resolved_quirks(tiny_clip_path, tmp_path):
    assert _tagger(tiny_clip_path, tmp_path).quirks == Quirks.reference()  # the default
    tagger = _tagger(tiny_clip_path, tmp_path, quirks=dict(cwr_early_exit=False))
    assert tagger.quirks == Quirks(cwr_early_exit=False)
    settings = model_settings(tagger)
    assert 'mode' not in settings
    assert settings['quirks'] == dict(dataclasses.asdict(Quirks()), cwr_early_exit=False)
    json.dumps(settings)  # still JSON
    labeler = _labeler(tiny_clip_path, tmp_path, quirks=Quirks.fixed())
    assert labeler.quirks == Quirks.fixed() and not labeler.round_pos_embed_fp16


@pytest.mark.parametrize('mode, preset', [('faithful', 'reference'), ('clean', 'fixed')])
def test_removed_mode_keyword_is_refused(tiny_clip_path, tmp_path, mode, preset):
    with pytest.raises(TypeError, match="'mode'"):
        _tagger(tiny_clip_path, tmp_path, mode=mode)
    with pytest.raises(TypeError, match="'mode'"):
        _labeler(tiny_clip_path, tmp_path, mode=mode)
    new = _tagger(tiny_clip_path, tmp_path, quirks=preset)
    assert new.quirks == resolve_quirks(preset)
    same = _tagger(tiny_clip_path, tmp_path, quirks=resolve_quirks(preset))
    assert resume_fingerprint(same) == resume_fingerprint(new)
    images = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    out = new.tag(images)
    for key in ('p_coarse', 'p_ref', 'p_final', 'tags', 'cwr_done'):
        assert torch.equal(getattr(out, key), getattr(new.tag(images), key)), key
    new_lab = _labeler(tiny_clip_path, tmp_path, quirks=preset)
    assert new_lab.quirks == resolve_quirks(preset)
    cams, _ = new_lab.compute_cams(images, [[0, 2], [1]])
    assert cams.shape[:2] == (2, 2)


def test_removed_mode_keyword_is_refused_with_quirks(tiny_clip_path, tmp_path):
    with pytest.raises(TypeError, match="'mode'"):
        _tagger(tiny_clip_path, tmp_path, quirks='fixed', mode='faithful')
    with pytest.raises(TypeError, match="'mode'"):
        _tagger(tiny_clip_path, tmp_path, quirks=dict(box_clamp=False), mode='faithful')
    with pytest.raises(TypeError, match="'mode'"):
        _tagger(tiny_clip_path, tmp_path, quirks='fixed', mode='clean')
    with pytest.raises(TypeError, match="'mode'"):
        _tagger(tiny_clip_path, tmp_path, mode='fast')


def test_the_labelers_tagger_follows_its_quirks(tiny_clip_path, tmp_path):
    tagger = dict(type='TagCLIP', clip=dict(checkpoint=tiny_clip_path),
                  text_cache_dir=str(tmp_path / 'cache'), **TAGGER)
    assert _labeler(tiny_clip_path, tmp_path, quirks='fixed',
                    tagger=tagger).tagger.quirks == Quirks.fixed()
    own = _labeler(tiny_clip_path, tmp_path, quirks='fixed',
                   tagger=dict(tagger, quirks='reference'))
    assert own.tagger.quirks == Quirks.reference()
    assert model_settings(own)['tagger']['quirks'] == dataclasses.asdict(Quirks.reference())


def test_the_labelers_crf_follows_its_quirks(tiny_clip_path, tmp_path):
    pytest.importorskip('pydensecrf')
    assert _labeler(tiny_clip_path, tmp_path, crf=dict()).crf.quirks.crf_reference_image
    fixed = _labeler(tiny_clip_path, tmp_path, quirks='fixed', crf=dict())
    assert fixed.crf.quirks == Quirks.fixed()
    assert model_settings(fixed)['crf']['quirks']['crf_reference_image'] is False
    # only that field switched, the rest of the labeler's preset kept
    one = _labeler(tiny_clip_path, tmp_path, quirks=dict(crf_reference_image=False), crf=dict())
    assert not one.crf.quirks.crf_reference_image and one.quirks.box_clamp
    # an explicit CRF setting wins
    own = _labeler(tiny_clip_path, tmp_path, quirks='fixed', crf=dict(quirks='reference'))
    assert own.crf.quirks.crf_reference_image
    with pytest.raises(TypeError, match="'image_mode'"):
        _labeler(tiny_clip_path, tmp_path, quirks='fixed', crf=dict(image_mode='faithful'))


def test_segmentor_shares_one_resolved_quirks(tiny_clip, tmp_path):
    from tagclip_mmseg.models.segmentors import TagCLIPSegmentor
    common = dict(clip=tiny_clip, text_cache_dir=str(tmp_path / 'cache'),
                  tagger=dict(TAGGER), labeler=dict(LABELER))
    seg = TagCLIPSegmentor(quirks=dict(pos_embed_fp16=False), **common)
    assert seg.quirks == seg.tagger.quirks == seg.labeler.quirks == Quirks(pos_embed_fp16=False)
    with pytest.raises(TypeError, match="'mode'"):
        TagCLIPSegmentor(mode='clean', **common)
    fixed = TagCLIPSegmentor(quirks='fixed', **common)
    assert fixed.tagger.quirks == fixed.labeler.quirks == Quirks.fixed()
    with pytest.raises(TypeError, match="'mode'"):
        TagCLIPSegmentor(**dict(common, tagger=dict(TAGGER, mode='clean')))
    with pytest.raises(ValueError, match='quirks'):
        TagCLIPSegmentor(**dict(common, labeler=dict(LABELER, quirks='fixed')))


# --------------------------------------------------------- CRF and metric
def test_crf_image_mode_is_refused():
    pytest.importorskip('pydensecrf')
    from tagclip_mmseg.models.pseudo_labelers import DenseCRF
    gen = np.random.default_rng(0)
    rgb = gen.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    probs = gen.random((3, 12, 16)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    for old_value, preset in (('faithful', 'reference'), ('clean', 'fixed')):
        with pytest.raises(TypeError, match="'image_mode'"):
            DenseCRF(image_mode=old_value)
        new = DenseCRF(quirks=preset)
        assert new.quirks.crf_reference_image == (preset == 'reference')
        np.testing.assert_array_equal(new.marginals(probs, rgb), new.marginals(probs, rgb))
    with pytest.raises(TypeError, match="'image_mode'"):
        DenseCRF(quirks='fixed', image_mode='faithful')


def _metric_samples():
    scores = [[0.9, 0.1, 0.2], [0.2, 0.8, 0.1], [0.7, 0.6, 0.3]]
    out = []
    for i, (s, g) in enumerate(zip(scores, [[0], [1], [0]])):  # class 2 never positive
        sample = DataSample(metainfo=dict(img_path=f'{i}.jpg'))
        sample.set_pred_score(torch.tensor(s)).set_gt_label(torch.tensor(g))
        out.append(sample.to_dict())
    return out


def _evaluate(metric):
    metric.process(None, _metric_samples())
    return metric.compute_metrics(metric.results)


@pytest.mark.parametrize('old_value, preset', [('faithful', 'reference'), ('clean', 'fixed')])
def test_metric_empty_class_mode_is_refused(old_value, preset):
    with pytest.raises(TypeError, match="'empty_class_mode'"):
        TaggingMetric(empty_class_mode=old_value)
    new = TaggingMetric(quirks=preset)
    assert new.quirks.empty_class_zero == (old_value == 'faithful')
    assert _evaluate(new) == _evaluate(TaggingMetric(quirks=preset))
    with pytest.raises(TypeError, match="'empty_class_mode'"):
        TaggingMetric(quirks='fixed' if preset == 'reference' else dict(empty_class_zero=True),
                      empty_class_mode=old_value)


# ---------------------------------------------------------------------- CLI
@pytest.mark.parametrize('argv, expected', [
    ([], 'reference'), (['--quirks', 'fixed'], 'fixed'), (['--mode', 'clean'], None),
    (['--mode', 'faithful', '--quirks', 'reference'], None)])
def test_quirks_flag_and_the_removed_alias(argv, expected, capsys):
    parser = argparse.ArgumentParser()
    add_quirks_args(parser)
    if expected is None:
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert 'unrecognized arguments: --mode' in capsys.readouterr().err
        return
    args = parser.parse_args(argv)
    assert quirks_from_args(parser, args) == expected == args.quirks
    assert not hasattr(args, 'mode')


def test_removed_mode_flag_stops_the_parser(capsys):
    parser = argparse.ArgumentParser()
    add_quirks_args(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(['--mode', 'clean'])
    assert '--mode' in capsys.readouterr().err
