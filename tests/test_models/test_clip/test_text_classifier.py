"""Text classifier (prompt ensembling, cache, validation) and the prompt data."""
import os

import pytest
import torch
import torch.nn.functional as F

from tagclip_mmseg.models.clip import get_tokenizer, load_clip, tokenize
from tagclip_mmseg.models.clip.prompts import (CLIPES_TEMPLATES, COCO_BACKGROUND, COCO_CAM_RENAMES,
                                               COCO_STUFF_CAM_RENAMES, COCO_STUFF_CLASSES,
                                               IMAGENET_TEMPLATES, TAGCLIP_SCENE_TEMPLATES,
                                               TAGCLIP_TEMPLATES, VOC_BACKGROUND, VOC_CAM_RENAMES,
                                               apply_renames)
from tagclip_mmseg.models.clip.text_classifier import (CACHE_ENV, build_text_classifier,
                                                       default_text_cache_dir)
from tagclip_mmseg.utils.class_names import COCO_CLASSES, VOC_CLASSES

NAMES = ['cat', 'dog', ['person with clothes', 'people', 'human']]
TEMPLATES = ['a photo of a {}.', 'a clean origami {}.', 'there is a {} in the scene.']


class CountingCLIP:
    """Wraps ``encode_text`` to count text-encoder forwards."""

    def __init__(self, clip):
        self.clip = clip
        self.calls = 0
        self.inner = clip.encode_text
        clip.encode_text = self

    def __call__(self, tokens):
        self.calls += 1
        return self.inner(tokens)


def reference_embeddings(clip, names, templates):
    """Per-class loop, as the reference code does it."""
    rows = []
    with torch.no_grad():
        for name in names:
            name = name if isinstance(name, str) else ','.join(name)
            emb = clip.encode_text(tokenize([t.format(name) for t in templates]))
            emb = F.normalize(emb, dim=-1).mean(0)
            rows.append(F.normalize(emb, dim=0))
    return torch.stack(rows)


def test_matches_per_class_reference(tiny_clip):
    emb = build_text_classifier(tiny_clip, NAMES, TEMPLATES, use_cache=False)
    assert emb.shape == (3, 32) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(emb, reference_embeddings(tiny_clip, NAMES, TEMPLATES),
                               atol=1e-6, rtol=0)
    # synonyms are a comma-joined name
    joined = build_text_classifier(tiny_clip, ['person with clothes,people,human'], TEMPLATES,
                                   use_cache=False)
    torch.testing.assert_close(joined[0], emb[2], atol=1e-6, rtol=0)


def test_batched_over_all_prompts(tiny_clip):
    counter = CountingCLIP(tiny_clip)
    one = build_text_classifier(tiny_clip, NAMES, TEMPLATES, use_cache=False)
    assert counter.calls == 1  # 9 prompts, one forward
    small = build_text_classifier(tiny_clip, NAMES, TEMPLATES, batch_size=4, use_cache=False)
    assert counter.calls == 1 + 3
    torch.testing.assert_close(one, small, atol=1e-6, rtol=0)


class ShapeRecordingCLIP(CountingCLIP):
    """Also records the token-batch shape of every text-encoder forward."""

    def __init__(self, clip):
        super().__init__(clip)
        self.shapes = []

    def __call__(self, tokens):
        self.shapes.append(tuple(tokens.shape))
        return super().__call__(tokens)


def test_prompts_run_only_to_their_batch_longest_token(tiny_clip):
    """Cutting each batch at its longest prompt is exact under the causal mask.

    Every prompt's embedding equals the one computed on the full 77-token context, including a
    prompt that fills the whole context.
    """
    tok = get_tokenizer()
    context = tiny_clip.context_length
    # 'cat' x 75 encodes to 75 tokens: with SOT and EOT it fills the context.
    full = ' '.join(['cat'] * (context - 2))
    names = ['a dog', full, 'cat', 'a large red double-decker bus on a rainy street',
             'a tall green tree']
    lengths = [len(tok.encode(n)) + 2 for n in names]
    assert lengths[1] == context and len(set(lengths)) == len(lengths)
    recorder = ShapeRecordingCLIP(tiny_clip)
    # One '{}' template: each class embedding is its one prompt's embedding.
    emb = build_text_classifier(tiny_clip, names, ['{}'], batch_size=2, use_cache=False)
    tiny_clip.encode_text = recorder.inner
    with torch.no_grad():
        expected = F.normalize(tiny_clip.encode_text(tokenize(names)), dim=-1)
    torch.testing.assert_close(emb, expected, atol=1e-6, rtol=0)  # original order kept
    # Sorted by length, batches of 2: the two shortest, the next two, the full one.
    ordered = sorted(lengths)
    assert recorder.shapes == [(2, ordered[1]), (2, ordered[3]), (1, context)]


def test_cache_hit_skips_the_text_encoder(tiny_clip, tmp_path):
    counter = CountingCLIP(tiny_clip)
    first = build_text_classifier(tiny_clip, NAMES, TEMPLATES, cache_dir=str(tmp_path),
                                  checkpoint_id='ckpt-a')
    assert counter.calls == 1
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith('.pt')
    second = build_text_classifier(tiny_clip, NAMES, TEMPLATES, cache_dir=str(tmp_path),
                                   checkpoint_id='ckpt-a')
    assert counter.calls == 1
    assert torch.equal(first, second)
    # every input of the embedding is part of the key
    build_text_classifier(tiny_clip, NAMES, TEMPLATES, cache_dir=str(tmp_path),
                          checkpoint_id='ckpt-b')
    build_text_classifier(tiny_clip, NAMES[:2], TEMPLATES, cache_dir=str(tmp_path),
                          checkpoint_id='ckpt-a')
    build_text_classifier(tiny_clip, NAMES, TEMPLATES[:2], cache_dir=str(tmp_path),
                          checkpoint_id='ckpt-a')
    assert counter.calls == 4
    assert len(os.listdir(tmp_path)) == 4
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]


def test_corrupt_cache_is_recomputed_and_rewritten(tiny_clip, tmp_path):
    first = build_text_classifier(tiny_clip, NAMES, TEMPLATES, cache_dir=str(tmp_path),
                                  checkpoint_id='ckpt')
    (path, ) = [tmp_path / f for f in os.listdir(tmp_path)]
    for garbage in (b'not a torch file', b''):
        path.write_bytes(garbage)
        counter = CountingCLIP(tiny_clip)
        with pytest.warns(UserWarning, match='text-embedding cache'):
            again = build_text_classifier(tiny_clip, NAMES, TEMPLATES, cache_dir=str(tmp_path),
                                          checkpoint_id='ckpt')
        assert counter.calls == 1
        torch.testing.assert_close(again, first)
        assert torch.load(path, weights_only=True)['embeddings'].shape == (3, 32)
        tiny_clip.encode_text = counter.inner


def test_no_identity_no_cache(tiny_clip, tmp_path):
    build_text_classifier(tiny_clip, NAMES, TEMPLATES, cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_loaded_clip_is_cached_by_fingerprint(tiny_clip_path, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / 'root'))
    assert default_text_cache_dir() == str(tmp_path / 'root' / 'text_embeddings')
    clip = load_clip(tiny_clip_path)
    emb = build_text_classifier(clip, NAMES, TEMPLATES)
    assert len(os.listdir(default_text_cache_dir())) == 1
    counter = CountingCLIP(clip)
    assert torch.equal(build_text_classifier(clip, NAMES, TEMPLATES), emb)
    assert counter.calls == 0


def test_unwritable_cache_only_warns(tiny_clip, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    with pytest.warns(UserWarning, match='cannot write'):
        emb = build_text_classifier(tiny_clip, NAMES, TEMPLATES, cache_dir=str(blocker / 'sub'),
                                    checkpoint_id='x')
    assert emb.shape == (3, 32)


@pytest.mark.parametrize('names, match', [
    ([], 'empty'),
    ('cat', 'list of names'),
    (['cat', 'dog', 'cat'], "duplicate.*'cat' \\(index 0\\) and 'cat' \\(index 2\\)"),
    (['cat', ' Cat '], 'duplicate'),
    (['cat', 3], 'class 1'),
    (['cat', ''], 'class 1'),
    (['cat', []], 'class 1'),
    (['cat', ['ok', None]], 'class 1'),
])
def test_vocabulary_validation(tiny_clip, names, match):
    with pytest.raises(ValueError, match=match):
        build_text_classifier(tiny_clip, names, TEMPLATES, use_cache=False)


@pytest.mark.parametrize('templates, match', [
    ([], 'non-empty'),
    (['a photo.'], 'exactly one'),
    (['{} and {}'], 'exactly one'),
    (['a {}.', 'a {}.'], 'duplicates'),
])
def test_template_validation(tiny_clip, templates, match):
    with pytest.raises(ValueError, match=match):
        build_text_classifier(tiny_clip, NAMES, templates, use_cache=False)


def test_too_long_class_name(tiny_clip):
    long_name = 'very ' * 80 + 'long thing'
    with pytest.raises(ValueError, match="class name\\(s\\) 'very very"):
        build_text_classifier(tiny_clip, ['cat', long_name], TEMPLATES, use_cache=False)
    with pytest.warns(UserWarning, match='truncating'):
        emb = build_text_classifier(tiny_clip, ['cat', long_name], TEMPLATES, truncate=True,
                                    use_cache=False)
    assert emb.shape == (2, 32)


# ------------------------------------------------------------ prompt data
def test_templates():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert IMAGENET_TEMPLATES[0] == 'a bad photo of a {}.'
    assert IMAGENET_TEMPLATES[-1] == 'a tattoo of the {}.'
    assert len(TAGCLIP_TEMPLATES) == 85 and len(set(TAGCLIP_TEMPLATES)) == 85
    assert TAGCLIP_TEMPLATES[80:] == TAGCLIP_SCENE_TEMPLATES
    assert all(t.count('{}') == 1 for t in TAGCLIP_TEMPLATES + CLIPES_TEMPLATES)
    assert CLIPES_TEMPLATES == ('a clean origami {}.', )


def test_templates_match_open_clip():
    metadata = pytest.importorskip('open_clip.zero_shot_metadata')
    assert tuple(t('{}') for t in metadata.OPENAI_IMAGENET_TEMPLATES) == IMAGENET_TEMPLATES


def test_vocabularies():
    assert len(VOC_CLASSES) == 20 and len(COCO_CLASSES) == 80 and len(COCO_STUFF_CLASSES) == 171
    assert len(VOC_BACKGROUND) == 25 and len(COCO_BACKGROUND) == 23
    assert set(VOC_BACKGROUND) - set(COCO_BACKGROUND) == {'keyboard', 'sign'}
    for names in (VOC_CLASSES, COCO_CLASSES, COCO_STUFF_CLASSES, VOC_BACKGROUND, COCO_BACKGROUND):
        assert len(set(names)) == len(names)
    for renames, names in ((VOC_CAM_RENAMES, VOC_CLASSES), (COCO_CAM_RENAMES, COCO_CLASSES)):
        assert set(renames) <= set(names)
    assert {'airplane', 'tv', 'person'} <= set(COCO_STUFF_CAM_RENAMES) & set(COCO_STUFF_CLASSES)
    cam = apply_renames(COCO_CLASSES, COCO_CAM_RENAMES)
    assert cam[COCO_CLASSES.index('snowboard')] == 'sknowboard'  # reference typo kept
    assert cam[0] == 'person with clothes,people,human'
    assert cam[1] == 'bicycle'


def test_every_vocabulary_fits_the_context():
    tok = get_tokenizer()
    longest = max(TAGCLIP_TEMPLATES + CLIPES_TEMPLATES, key=lambda t: len(tok.encode(t.format(''))))
    cam_names = (apply_renames(VOC_CLASSES, VOC_CAM_RENAMES) +
                 apply_renames(COCO_CLASSES, COCO_CAM_RENAMES) +
                 apply_renames(COCO_STUFF_CLASSES, COCO_STUFF_CAM_RENAMES))
    names = (VOC_CLASSES + VOC_BACKGROUND + COCO_CLASSES + COCO_BACKGROUND + COCO_STUFF_CLASSES +
             tuple(cam_names))
    tokenize([longest.format(n) for n in names])  # raises if any is too long
