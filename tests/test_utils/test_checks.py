"""Settings out of range, non-finite outputs, and checkpoints with no weights to load.

* Every ratio, threshold, weight and count of the models is checked at build
  time by one helper (``utils.check_range``), with the allowed interval in the
  message.
* NaN or inf scores and CAMs are refused by one check (``utils.check_finite``)
  wherever they are computed (tagger, labeler, segmentor) and wherever they
  arrive (writers), instead of turning into "no tags" and background masks.
* ``tools/test.py`` refuses a positional checkpoint for a training-free model.
"""
import math
import os.path as osp
import re

import pytest
import torch
from mmengine.registry import init_default_scope
from mmpretrain.structures import DataSample
from mmseg.structures import SegDataSample

from tagclip_mmseg.models.pseudo_labelers import CLIPESPseudoLabeler, DenseCRF
from tagclip_mmseg.models.segmentors import TagCLIPSegmentor
from tagclip_mmseg.models.taggers import TagCLIP
from tagclip_mmseg.testing.checkout import repo_root
from tagclip_mmseg.utils import NonFiniteError, check_finite, check_range

ROOT = repo_root(__file__)
TAGGER = dict(class_names=['cat', 'dog', 'car'], background_words=['sky'],
              templates=['a photo of a {}.'], avg_layers=[0, 1], vote_k=2, cwr_crop_size=64)
LABELER = dict(class_names=['cat', 'dog', 'car'], background_words=['sky'],
               templates=['a photo of a {}.'], caa_layers=[0, 1, 2])


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope('mmseg')


# ------------------------------------------------------------ check_range
@pytest.mark.parametrize('kwargs,value,ok', [
    (dict(low=0, high=1), 0, True),
    (dict(low=0, high=1), 1, True),
    (dict(low=0, high=1), 1.0000001, False),
    (dict(low=0, high=1, high_open=True), 1, False),
    (dict(low=0, high=1, high_open=True), 0.999, True),
    (dict(low=0, low_open=True), 0, False),
    (dict(low=0, low_open=True), 1e-9, True),
    (dict(high=0), 0, True),
    (dict(high=0), 0.1, False),
    (dict(high=0), -math.inf, True),
    (dict(low=0, high=1), math.nan, False),
    (dict(low=0, high=1), True, False),
    (dict(low=0, high=1), '0.3', False),
    (dict(low=1, integer=True), 2, True),
    (dict(low=1, integer=True), 2.0, False),
    (dict(low=0, high=1), None, False),
    (dict(low=0, high=1, allow_none=True), None, True),
])
def test_check_range_bounds(kwargs, value, ok):
    if ok:
        assert check_range('x', value, **kwargs) is value
    else:
        with pytest.raises(ValueError, match=r'^x must be '):
            check_range('x', value, **kwargs)


def test_check_range_message_names_the_interval():
    with pytest.raises(ValueError) as info:
        check_range('cwr_region_thr', -3, 0, 1, high_open=True)
    assert str(info.value) == 'cwr_region_thr must be a number in [0, 1), got -3'
    with pytest.raises(ValueError) as info:
        check_range('crf.bilateral_sxy', 0., 0, low_open=True)
    assert str(info.value) == 'crf.bilateral_sxy must be a number in (0, inf), got 0.0'
    with pytest.raises(ValueError) as info:
        check_range('tag_ratio', 1.5, 0, 1, allow_none=True)
    assert str(info.value) == 'tag_ratio must be a number in [0, 1] or None, got 1.5'


# --------------------------------------------------- settings at build time
def _tagger(clip, **kw):
    return TagCLIP(clip=clip, **{**TAGGER, **kw})


def _labeler(clip, **kw):
    return CLIPESPseudoLabeler(clip=clip, **{**LABELER, **kw})


def _segmentor(clip, **kw):
    return TagCLIPSegmentor(clip=clip, tagger=TAGGER, labeler=LABELER, **kw)


#: (builder, setting, bad value, the interval the message must give). The
#: first five are the values of the issue.
BAD_SETTINGS = [
    (_tagger, 'tag_ratio', -0.5, '[0, 1]'),
    (_tagger, 'cwr_ratio', 2.0, '[0, 1]'),
    (_tagger, 'cwr_ratio', -1, '[0, 1]'),
    (_tagger, 'fusion_lambda', 1.7, '[0, 1]'),
    (_tagger, 'cwr_region_thr', -3, '[0, 1)'),
    (_tagger, 'cwr_region_thr', 1.0, '[0, 1)'),
    (_tagger, 'fusion_lambda', math.nan, '[0, 1]'),
    (_tagger, 'tag_ratio', 1.01, '[0, 1]'),
    (_tagger, 'vote_k', 0, '[1, 3]'),
    (_tagger, 'vote_k', 4, '[1, 3]'),
    (_tagger, 'self_attn_mask_value', 100., '(-inf, 0]'),
    (_tagger, 'cwr_mask_value', 1000., '(-inf, 0]'),
    (_tagger, 'cwr_batch_size', 0, '[1, inf)'),
    (_tagger, 'cwr_crop_size', -64, '[1, inf)'),
    (_labeler, 'caa_box_thr', 1.4, '[0, 1]'),
    (_labeler, 'caa_box_thr', -0.1, '[0, 1]'),
    (_segmentor, 'tag_ratio', -0.5, '[0, 1]'),
    (_segmentor, 'tag_ratio', 1.5, '[0, 1]'),
    (_segmentor, 'test_cfg', dict(cam_batch_pairs=0), '[1, inf)'),
    (_segmentor, 'test_cfg', dict(tag_max_tokens=-5), '[1, inf)'),
]
CRF_SETTINGS = [
    ('iterations', 0, '[1, inf)'),
    ('gaussian_sxy', 0., '(0, inf)'),
    ('gaussian_compat', -3., '[0, inf)'),
    ('bilateral_sxy', -67., '(0, inf)'),
    ('bilateral_srgb', 0., '(0, inf)'),
    ('bilateral_compat', -4., '[0, inf)'),
    ('confidence_thr', 1.2, '[0, 1]'),
    ('confidence_thr', -0.95, '[0, 1]'),
    ('workers', -1, '[0, inf)'),
    ('workers', 1.5, '[0, inf)'),
]


@pytest.mark.parametrize('build,name,value,interval', BAD_SETTINGS,
                         ids=[f'{b.__name__[1:]}-{n}={v}' for b, n, v, _ in BAD_SETTINGS])
def test_bad_model_settings_are_refused_with_the_range(tiny_clip, build, name, value, interval):
    with pytest.raises(ValueError) as info:
        build(tiny_clip, **{name: value})
    message = str(info.value)
    assert name in message.split(' must ')[0] and interval in message, message


@pytest.mark.parametrize('name,value,interval', CRF_SETTINGS,
                         ids=[f'{n}={v}' for n, v, _ in CRF_SETTINGS])
def test_bad_crf_settings_are_refused_with_the_range(name, value, interval):
    with pytest.raises(ValueError, match=re.escape(f'crf.{name} must be')) as info:
        DenseCRF(**{name: value})
    assert interval in str(info.value)


def test_bad_crf_setting_through_the_labeler_and_the_segmentor(tiny_clip):
    with pytest.raises(ValueError, match=re.escape('crf.confidence_thr must be a number in '
                                                   '[0, 1] or None, got 95')):
        _labeler(tiny_clip, crf=dict(confidence_thr=95))
    with pytest.raises(ValueError, match=re.escape('crf.bilateral_srgb must be')):
        _segmentor(tiny_clip, crf=dict(bilateral_srgb=-3))


def test_edge_values_are_accepted(tiny_clip):
    """Closed ends of the intervals build."""
    tagger = _tagger(tiny_clip, tag_ratio=1, cwr_ratio=0, fusion_lambda=1., cwr_region_thr=0,
                     vote_k=3)
    assert (tagger.tag_ratio, tagger.cwr_ratio, tagger.fusion_lambda) == (1, 0, 1.)
    assert _labeler(tiny_clip, caa_box_thr=1.).caa_box_thr == 1.
    assert _segmentor(tiny_clip, tag_ratio=0.).tag_ratio == 0.
    crf = DenseCRF(confidence_thr=1, gaussian_compat=0, bilateral_compat=0, iterations=1)
    assert crf.params['confidence_thr'] == 1 and crf.params['gaussian']['compat'] == 0


# ------------------------------------------------------------ check_finite
def test_check_finite_names_what_and_where():
    check_finite(torch.tensor([[0.2, 0.7]]), 'scores')
    check_finite(torch.tensor([3, 4]), 'integer labels')  # not floating: nothing to check
    with pytest.raises(NonFiniteError) as info:
        check_finite(torch.tensor([[0.1, 0.2], [float('nan'), float('inf')]]), 'TagCLIP scores')
    message = str(info.value)
    assert message.startswith('TagCLIP scores hold non-finite values (NaN or inf) at 2 of 4 '
                              'entries, first at index [(1, 0), (1, 1)]')
    assert 'try fp32' in message and isinstance(info.value, ValueError)


def _overflowing(clip):
    """A CLIP whose image features overflow (as an fp16 run does).

    Finite weights on disk, inf in the computation.
    """
    clip.visual.ln_post.bias.data[0] = float('inf')
    return clip


def _image(seed=0):
    return torch.randn(3, 32, 48, generator=torch.Generator().manual_seed(seed))


def test_nan_scores_in_the_segmentor_raise_instead_of_background(tiny_clip):
    """The issue's case: NaN scores became "no tags" and all-background masks.

    The result was a plausible mIoU.
    """
    model = _segmentor(_overflowing(tiny_clip)).eval()
    sample = SegDataSample(metainfo=dict(ori_shape=(32, 48)))
    with pytest.raises(NonFiniteError, match=r'^TagCLIP scores .* hold non-finite values'):
        model.predict([_image()], [sample])
    assert 'pred_sem_seg' not in sample


def test_nan_cams_raise_in_the_labeler_and_the_segmentor(tiny_clip):
    labeler = _labeler(_overflowing(tiny_clip)).eval()
    sample = SegDataSample(metainfo=dict(ori_shape=(32, 48), tags=[1]))
    with pytest.raises(NonFiniteError, match=r'^CLIP-ES CAMs .* hold non-finite values'):
        labeler.predict([_image()], [sample])
    segmentor = TagCLIPSegmentor(clip=labeler.clip, labeler=LABELER, all_classes_as_tags=True)
    with pytest.raises(NonFiniteError, match=r'^CLIP-ES CAMs'):
        segmentor.predict([_image()], [SegDataSample(metainfo=dict(ori_shape=(32, 48)))])


def test_nan_scores_raise_in_the_tagger(tiny_clip):
    tagger = _tagger(_overflowing(tiny_clip)).eval()
    with pytest.raises(NonFiniteError, match=r'^TagCLIP scores'):
        tagger.predict([_image()], [DataSample()])


# ------------------------------------------- tools/test.py and checkpoints
def test_positional_checkpoint_of_a_training_free_config_is_refused(tmp_path, tool_runner,
                                                                    tiny_tool_options):
    """It used to log a key-mismatch warning and run with the config's CLIP."""
    other = tmp_path / 'other_clip.pth'
    other.write_bytes(open(tiny_tool_options['checkpoint'], 'rb').read())
    with pytest.raises(ValueError) as info:
        tool_runner.inprocess('tools/test.py', 'configs/tagclip/tagclip_vit-b16_voc07-test.py',
                              str(other), '--work-dir', str(tmp_path / 'work'),
                              '--cfg-options', *tiny_tool_options['tag'])
    message = str(info.value)
    assert 'TagCLIP is training-free' in message
    assert f'--clip-checkpoint {other}' in message and 'model.clip.checkpoint=' in message


def test_a_model_with_trainable_weights_takes_the_checkpoint():
    import runpy

    from torch import nn
    tool = runpy.run_path(osp.join(ROOT, 'tools', 'test.py'), run_name='tools_test')
    tool['refuse_checkpoint_without_weights'](nn.Linear(2, 2), 'trained.pth')
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match='Linear is training-free'):
        tool['refuse_checkpoint_without_weights'](frozen, 'trained.pth')


def test_checkpoint_with_nan_or_inf_weights_is_refused_naming_the_tensors(tmp_path, tiny_clip):
    from tagclip_mmseg.models.clip import CheckpointError, load_clip
    state = {k: v.clone() for k, v in tiny_clip.state_dict().items()}
    state['visual.transformer.resblocks.1.mlp.c_fc.weight'][3, 5] = float('nan')
    state['token_embedding.weight'][7, 0] = float('inf')
    path = tmp_path / 'broken.pth'
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_clip(str(path))
    message = str(info.value)
    assert 'visual.transformer.resblocks.1.mlp.c_fc.weight' in message
    assert 'token_embedding.weight' in message and 'NaN or inf' in message
    assert 'visual.conv1.weight' not in message
