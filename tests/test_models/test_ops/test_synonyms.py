"""The two synonym rules: 'joined' (TagCLIP's) and 'max' (the peers').

Under 'max' every name of a class has its own embedding (the mean of the
templates), one softmax runs over all names of all classes and background
words, and each class takes the largest of its names' probabilities. The
oracles below compute that by hand from the model's own text encoder and from
the plain softmax of the unchanged one-name-per-class path.
"""
import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config

from tagclip_mmseg.models.clip.text_classifier import _cache_key, build_text_classifier
from tagclip_mmseg.models.clip.tokenizer import get_tokenizer
from tagclip_mmseg.models.ops import class_softmax
from tagclip_mmseg.models.segmentors import TagCLIPSegmentor
from tagclip_mmseg.testing.checkout import repo_root
from tagclip_mmseg.testing.models import build_labeler, build_tagger

ROOT = repo_root(__file__)
TEMPLATES = ('a photo of a {}.', 'a sketch of the {}.')
CLASSES = ['cat', ['dog', 'puppy']]
FLAT = ['cat', 'dog', 'puppy']
BACKGROUND = ['sky']
TAGGER = dict(templates=TEMPLATES, vote_k=2, avg_layers=(0, 1), cwr_crop_size=48,
              cwr_ratio=0.3, tag_ratio=0.65, fusion_lambda=0.3)


def test_class_softmax_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.5, 3.0]])
    rows = torch.tensor([0, 1, 1, 2])
    e = [math.exp(v) for v in (1.0, 2.0, 0.5, 3.0)]
    total = sum(e)
    expected = [e[0] / total, max(e[1], e[2]) / total, e[3] / total]
    out = class_softmax(logits, rows, 3)
    torch.testing.assert_close(out, torch.tensor([expected]))
    # Support: class 2 out of the softmax.
    sub = sum(e[:3])
    out = class_softmax(logits, rows, 3, support=torch.tensor([[True, True, False]]))
    torch.testing.assert_close(out, torch.tensor([[e[0] / sub, e[1] / sub, 0.]]))
    # The gradient of a class score reaches only the row that attains the max:
    # d p_1 / d z_j = p_1 (delta_1j - p_j).
    z = logits.clone().requires_grad_(True)
    class_softmax(z, rows, 3)[0, 1].backward()
    p = [v / total for v in e]
    torch.testing.assert_close(z.grad[0], torch.tensor([-p[1] * p[0], p[1] * (1 - p[1]),
                                                        -p[1] * p[2], -p[1] * p[3]]))


def hand_embedding(clip, name):
    """Mean of the L2-normalised template embeddings, normalised: by hand."""
    tok = get_tokenizer()
    tokens = tok([t.format(name) for t in TEMPLATES], clip.context_length)
    with torch.no_grad():
        emb = F.normalize(clip.encode_text(tokens).float(), dim=-1).mean(dim=0)
    return F.normalize(emb, dim=0)


def test_max_rule_embeddings_and_coarse_scores_by_hand(tiny_clip, tmp_path):
    tagger = build_tagger(tiny_clip, work_dir=tmp_path, class_names=CLASSES,
                          background_words=BACKGROUND, synonyms='max', **TAGGER)
    rows = tagger.classifier()
    hand = torch.stack([hand_embedding(tiny_clip, n) for n in FLAT + BACKGROUND])
    torch.testing.assert_close(rows, hand, atol=1e-5, rtol=1e-5)
    # Oracle: one softmax over the four names (the one-name-per-class path),
    # then each class's max over its names.
    flat = build_tagger(tiny_clip, work_dir=tmp_path, class_names=FLAT,
                        background_words=BACKGROUND, **TAGGER)
    images = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    p_max, _, _ = tagger.coarse_pass(images, tagger.classifier())
    p_flat, _, _ = flat.coarse_pass(images, flat.classifier())
    expected = torch.stack([p_flat[..., 0], p_flat[..., 1:3].amax(-1), p_flat[..., 3]], -1)
    torch.testing.assert_close(p_max, expected, atol=1e-6, rtol=1e-5)
    # Both names win somewhere, so the max is exercised on both sides.
    winner = p_flat[..., 1] > p_flat[..., 2]
    assert winner.any() and (~winner).any()
    # Every later step sees one score per class.
    out = tagger.tag(images)
    assert out.p_final.shape == (2, 2) and out.p_coarse.shape[-1] == 3


def test_grad_cam_target_is_the_class_score_after_the_max(tiny_clip, tmp_path):
    common = dict(background_words=BACKGROUND, templates=TEMPLATES, caa_layers=(0, 1, 2))
    labeler = build_labeler(tiny_clip, work_dir=tmp_path, class_names=CLASSES, synonyms='max',
                            **common)
    flat = build_labeler(tiny_clip, work_dir=tmp_path, class_names=FLAT, **common)
    images = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    cam_max, _ = labeler.compute_cams(images, [[1]])
    # 'dog' and 'puppy' tagged together: the softmax support of 'max' (both
    # names and the background word), one CAM per name.
    cam_flat, _ = flat.compute_cams(images, [[1, 2]])
    assert not torch.allclose(cam_flat[0, 0], cam_flat[0, 1], atol=1e-4)
    # The class target is the probability of the name that attains the max.
    with torch.no_grad():
        out = tiny_clip.visual.forward_until(images, tiny_clip.visual.num_layers - 1,
                                             round_pos_embed_fp16=labeler.round_pos_embed_fp16)
    from tagclip_mmseg.models.clip.last_block_grad import LastBlockGrad
    pooled = F.normalize(LastBlockGrad(tiny_clip.visual, out.hidden).pooled_embedding(), dim=-1)
    text = flat.text_embeddings(FLAT + BACKGROUND, TEMPLATES)
    probs = (100. * pooled @ text[1:].t()).softmax(-1)[0]  # dog, puppy, sky
    argmax = int(probs[:2].argmax())
    torch.testing.assert_close(cam_max[0, 0], cam_flat[0, argmax], atol=1e-5, rtol=1e-4)


def test_text_cache_key_includes_the_rule(tiny_clip, tmp_path):
    key = dict(checkpoint_id='x', names=CLASSES, templates=TEMPLATES, dtype=torch.float32,
               context_length=77, truncate=False)
    assert _cache_key(**key, synonyms='joined') != _cache_key(**key, synonyms='max')
    joined = build_text_classifier(tiny_clip, CLASSES, TEMPLATES, cache_dir=str(tmp_path),
                                   checkpoint_id='x')
    split = build_text_classifier(tiny_clip, CLASSES, TEMPLATES, cache_dir=str(tmp_path),
                                  checkpoint_id='x', synonyms='max')
    assert joined.shape[0] == 2 and split.shape[0] == 3
    assert len(list(tmp_path.glob('*.pt'))) == 2
    again = build_text_classifier(tiny_clip, CLASSES, TEMPLATES, cache_dir=str(tmp_path),
                                  checkpoint_id='x', synonyms='max')
    torch.testing.assert_close(again, split)


def test_rule_validation_and_duplicates(tiny_clip, tmp_path):
    with pytest.raises(ValueError, match='synonyms must be one of'):
        build_tagger(tiny_clip, class_names=FLAT, synonyms='mean', **TAGGER)
    # A name shared by two classes would be one embedding twice in the softmax.
    with pytest.raises(ValueError, match='duplicate'):
        build_tagger(tiny_clip, class_names=[['dog', 'pet'], ['cat', 'pet']], synonyms='max',
                     **TAGGER)
    build_tagger(tiny_clip, class_names=[['dog', 'pet'], ['cat', 'pet']], **TAGGER)


def test_segmentor_passes_the_rule_to_both_models(tiny_clip, tmp_path):
    model = TagCLIPSegmentor(
        clip=tiny_clip, text_cache_dir=str(tmp_path), synonyms='max',
        tagger=dict(class_names=CLASSES, background_words=['sky', 'puppy'], templates=TEMPLATES,
                    avg_layers=[0, 1], vote_k=2, cwr_crop_size=64),
        labeler=dict(class_names=CLASSES, background_words=['sky', 'puppy'],
                     templates=TEMPLATES, caa_layers=[0, 1, 2]))
    assert model.tagger.synonyms == model.labeler.synonyms == 'max'
    # A background word that is a synonym of a class is no competitor.
    assert model.labeler.background_words == model.tagger.background_words == ('sky', )
    with pytest.raises(ValueError, match='synonyms'):
        TagCLIPSegmentor(clip=tiny_clip, labeler=dict(class_names=FLAT, synonyms='max'))


@pytest.mark.parametrize('group, rule', [('open_vocab', 'max'), ('tagclip', 'joined'),
                                         ('pseudo_labelers', 'joined')])
def test_configs_choose_the_rule(group, rule):
    import glob
    paths = sorted(glob.glob(osp.join(ROOT, 'configs', group, '*.py')))
    assert paths
    for path in paths:
        assert Config.fromfile(path).model.get('synonyms', 'joined') == rule, path


def test_labeler_in_pass_tagger_takes_the_rule(tiny_clip, tmp_path):
    labeler = build_labeler(
        tiny_clip, work_dir=tmp_path, class_names=CLASSES, background_words=BACKGROUND,
        templates=TEMPLATES, caa_layers=(0, 1, 2), synonyms='max',
        tagger=dict(type='TagCLIP', clip=tiny_clip, class_names=CLASSES,
                    background_words=BACKGROUND, **TAGGER))
    assert labeler.tagger.synonyms == 'max'
    from tagclip_mmseg.resume.fingerprint import model_settings
    settings = model_settings(labeler)
    assert settings['synonyms'] == 'max'
    assert settings['tagger']['synonyms'] == 'max'
