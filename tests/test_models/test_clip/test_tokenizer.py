"""CLIP BPE tokenizer: golden ids, OpenAI framing, parity with open_clip."""
import hashlib

import pytest
import torch

from tagclip_mmseg.models.clip.tokenizer import (CONTEXT_LENGTH, EOT_TOKEN, SOT_TOKEN,
                                                 SimpleTokenizer, default_bpe_path, get_tokenizer,
                                                 tokenize)

# Ids of OpenAI's tokenizer (cross-checked against open_clip below).
GOLDEN = {
    'a photo of a cat.': [320, 1125, 539, 320, 2368, 269],
    'Hello, World!': [3306, 267, 1002, 256],
    'café naïve résumé': [15304, 1097, 35689, 563, 29106, 7054, 4166],
    '日本語のテキスト 🐱':
    [39121, 44353, 34002, 252, 21575, 2429, 228, 47121, 32421, 486, 22979],
    "don't  stop\n\tthe  music": [847, 713, 1691, 518, 1179],
}

PARITY_TEXTS = [
    'a photo of a cat.', 'Hello, World!', 'café naïve résumé', '日本語のテキスト 🐱',
    "don't  stop\n\tthe  music", '&amp;lt;b&amp;gt; html entities', 'mojibake: cafÃ©',
    'a clean origami person with clothes,people,human.', 'sknowboard', '3.14159 and 42', '',
    '   ', 'tvmonitor screen', 'x' * 300, 'word ' * 90, 'ÀÉÎÕÜ uppercase accents',
    '\u00ad\u200bzw'
]


def test_vocabulary_comes_from_the_mmseg_wheel():
    path = default_bpe_path()
    assert path.replace('\\', '/').endswith('mmseg/utils/bpe_simple_vocab_16e6.txt.gz')
    with open(path, 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest().startswith('924691ac288e')
    tok = get_tokenizer()
    assert tok.vocab_size == 49408
    assert (tok.sot_token, tok.eot_token) == (SOT_TOKEN, EOT_TOKEN) == (49406, 49407)
    assert get_tokenizer() is tok  # built once


@pytest.mark.parametrize('text', list(GOLDEN))
def test_golden_ids(text):
    ids = GOLDEN[text]
    assert get_tokenizer().encode(text) == ids
    row = tokenize(text)[0]
    assert row.dtype == torch.long and row.shape == (CONTEXT_LENGTH, )
    assert row[:len(ids) + 2].tolist() == [SOT_TOKEN, *ids, EOT_TOKEN]
    assert not row[len(ids) + 2:].any()


def test_batch_shape_and_decode():
    tokens = tokenize(['a photo of a cat.', 'Hello, World!'], context_length=16)
    assert tokens.shape == (2, 16)
    tok = get_tokenizer()
    assert tok.decode(tok.encode('A Photo of a CAT.')) == 'a photo of a cat .'
    assert tok.decode(tok.encode('café naïve')) == 'café naïve'


def test_over_length_raises_unless_truncated():
    text = 'word ' * 90  # 90 words + SOT + EOT > 77
    with pytest.raises(ValueError, match='context length 77.*truncate=True'):
        tokenize(text)
    row = tokenize(text, truncate=True)[0]
    assert row[0] == SOT_TOKEN and row[-1] == EOT_TOKEN
    assert row.argmax() == CONTEXT_LENGTH - 1
    # exactly 77 tokens fits without truncation
    fits = 'word ' * (CONTEXT_LENGTH - 2)
    assert tokenize(fits)[0, -1] == EOT_TOKEN


def test_bad_inputs():
    with pytest.raises(TypeError, match='strings'):
        tokenize(['ok', 3])
    with pytest.raises(ValueError, match='at least 2'):
        tokenize('a', context_length=1)
    with pytest.raises(ValueError, match='merges'):
        SimpleTokenizer(__file__)  # not a gzip merges file


def test_matches_open_clip_tokenizer():
    open_clip = pytest.importorskip('open_clip')
    reference = open_clip.tokenizer.SimpleTokenizer()
    ours = tokenize(PARITY_TEXTS, truncate=True)
    theirs = reference(PARITY_TEXTS, context_length=CONTEXT_LENGTH)
    assert torch.equal(ours, theirs.long())
