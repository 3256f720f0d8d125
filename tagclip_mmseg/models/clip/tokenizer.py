"""CLIP's byte-level BPE tokenizer, with no download.

Reproduces OpenAI's cleaning and merges exactly (a deviation silently changes
token ids); the merges file is the copy the mmsegmentation wheel ships.
"""
import functools
import gzip
import html
import importlib.util
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import ftfy
import regex
import torch
from torch import Tensor

__all__ = [
    'SimpleTokenizer', 'get_tokenizer', 'tokenize', 'default_bpe_path', 'SOT_TOKEN', 'EOT_TOKEN',
    'CONTEXT_LENGTH'
]

#: Start-of-text id (``<|startoftext|>``).
SOT_TOKEN = 49406
#: End-of-text id (``<|endoftext|>``); the largest id, which is why CLIP pools
#: the text feature at ``argmax(ids)``.
EOT_TOKEN = 49407
#: CLIP's text context length.
CONTEXT_LENGTH = 77

_SOT_STR = '<|startoftext|>'
_EOT_STR = '<|endoftext|>'
#: The vocabulary is 256 byte symbols, their 256 end-of-word variants, the
#: merges and the two special tokens: 49 408 ids in all.
_NUM_MERGES = 49152 - 256 - 2
_VOCAB_PACKAGE = 'mmseg'
_VOCAB_RESOURCE = ('utils', 'bpe_simple_vocab_16e6.txt.gz')
#: OpenAI's word splitter: special tokens, English contractions, runs of
#: letters, single digits, runs of other non-space characters.
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"""
    r'|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+', regex.IGNORECASE)
_WHITESPACE = regex.compile(r'\s+')


def default_bpe_path() -> str:
    """Path of the BPE merges file shipped inside the mmsegmentation wheel.

    Raises:
        FileNotFoundError: When the installed mmsegmentation lacks the file.
    """
    # importlib.util, not importlib.resources.files: the package supports Python 3.8.
    spec = importlib.util.find_spec(_VOCAB_PACKAGE)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    path = os.path.join(roots[0] if roots else _VOCAB_PACKAGE, *_VOCAB_RESOURCE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'CLIP BPE vocabulary not found at {path!r}; it ships with mmsegmentation 1.x '
            '(mmseg/utils/bpe_simple_vocab_16e6.txt.gz). Reinstall mmsegmentation==1.2.2 or '
            'pass bpe_path= to get_tokenizer().')
    return path


def _byte_symbols() -> Dict[int, str]:
    """Byte value -> the character BPE uses for it, in vocabulary-id order.

    Printable Latin-1 bytes stand for themselves; the rest are
    ``chr(256 + n)``.
    """
    # '!'..'~', then Latin-1 '¡'..'¬' and '®'..'ÿ' (soft hyphen 0xAD excluded).
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shown = set(printable)
    others = [b for b in range(256) if b not in shown]
    symbols = {b: chr(b) for b in printable}
    symbols.update({b: chr(256 + n) for n, b in enumerate(others)})
    return symbols


@functools.lru_cache(maxsize=4)
def _load_merges(bpe_path: str) -> Tuple[Tuple[str, str], ...]:
    """Read the BPE merges (cached: every tokenizer needs the same list)."""
    try:
        with gzip.open(bpe_path, 'rt', encoding='utf-8') as f:
            lines = f.read().split('\n')
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f'cannot read the CLIP BPE merges file {bpe_path!r}: {e}') from e
    # Line 0 is a version header; the vocabulary uses exactly _NUM_MERGES merges.
    merges = tuple(tuple(line.split()) for line in lines[1:_NUM_MERGES + 1])
    if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{bpe_path!r} is not CLIP's BPE merges file (expected "
                         f'{_NUM_MERGES} pairs after the header line)')
    return merges


def _clean(text: str) -> str:
    """OpenAI's text normalisation: fix mojibake, unescape HTML, lower-case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(' ', text).strip().lower()


class SimpleTokenizer:
    """Encode text to CLIP token ids and back.

    Args:
        bpe_path (str, optional): BPE merges file; defaults to the copy in the
            mmsegmentation wheel (:func:`default_bpe_path`).
    """

    def __init__(self, bpe_path: Optional[str] = None) -> None:
        self.bpe_path = bpe_path or default_bpe_path()
        merges = _load_merges(self.bpe_path)
        self.byte_symbols = _byte_symbols()
        self.symbol_bytes = {s: b for b, s in self.byte_symbols.items()}
        base = list(self.byte_symbols.values())
        vocab = base + [s + '</w>' for s in base] + [a + b for a, b in merges]
        vocab += [_SOT_STR, _EOT_STR]
        self.encoder: Dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.decoder: Dict[int, str] = dict(enumerate(vocab))
        self.merge_ranks: Dict[Tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        # Words repeat a lot across prompts (templates x classes); merging is
        # the slow part, so remember each word's pieces.
        self._word_cache: Dict[str, Tuple[str, ...]] = {
            _SOT_STR: (_SOT_STR, ),
            _EOT_STR: (_EOT_STR, )
        }
        self.sot_token = self.encoder[_SOT_STR]
        self.eot_token = self.encoder[_EOT_STR]
        assert (self.sot_token, self.eot_token) == (SOT_TOKEN, EOT_TOKEN)

    @property
    def vocab_size(self) -> int:
        """Number of tokens in the vocabulary."""
        return len(self.encoder)

    def _merge_word(self, word: str) -> Tuple[str, ...]:
        """Apply the BPE merges to one word (already mapped to byte symbols).

        Repeatedly merges the adjacent pair with the lowest rank, every
        non-overlapping occurrence left to right, until no pair is a merge.
        """
        cached = self._word_cache.get(word)
        if cached is not None:
            return cached
        pieces = [*word[:-1], word[-1] + '</w>']
        ranks = self.merge_ranks
        while len(pieces) > 1:
            best = min(zip(pieces, pieces[1:]), key=lambda p: ranks.get(p, _NUM_MERGES))
            if best not in ranks:
                break
            first, second = best
            merged: List[str] = []
            i = 0
            while i < len(pieces):
                if i + 1 < len(pieces) and pieces[i] == first and pieces[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(pieces[i])
                    i += 1
            pieces = merged
        result = tuple(pieces)
        self._word_cache[word] = result
        return result

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text``, without start/end tokens."""
        ids: List[int] = []
        for word in _WORD_PATTERN.findall(_clean(text)):
            symbols = ''.join(self.byte_symbols[b] for b in word.encode('utf-8'))
            ids.extend(self.encoder[piece] for piece in self._merge_word(symbols))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; end-of-word markers become spaces.

        Meant for debugging and error messages: padding (id 0, the symbol
        ``!``) and special tokens are not stripped.
        """
        out = bytearray()
        for piece in (self.decoder[int(i)] for i in ids):
            word_end = piece.endswith('</w>')
            out.extend(self.symbol_bytes[c] for c in (piece[:-4] if word_end else piece))
            if word_end:
                out.extend(b' ')
        return out.decode('utf-8', errors='replace').strip()

    def pack(self,
             ids: Sequence[Sequence[int]],
             context_length: int = CONTEXT_LENGTH,
             truncate: bool = False) -> Tensor:
        """Frame encoded texts as ``[SOT, ids..., EOT, 0, ...]`` rows.

        Args:
            ids (Sequence[Sequence[int]]): Outputs of :meth:`encode`.
            context_length (int): Row length.
            truncate (bool): Cut over-long rows, keeping EOT last, instead of
                raising.

        Returns:
            Tensor: Long tensor (len(ids), context_length).
        """
        if context_length < 2:
            raise ValueError(f'context_length must be at least 2, got {context_length}')
        result = torch.zeros(len(ids), context_length, dtype=torch.long)
        for row, text_ids in enumerate(ids):
            framed = [self.sot_token, *text_ids, self.eot_token]
            if len(framed) > context_length:
                if not truncate:
                    text = self.decode(text_ids)
                    shown = text if len(text) <= 80 else text[:77] + '...'
                    raise ValueError(
                        f'text {shown!r} is {len(framed)} tokens long with its start/end tokens, '
                        f'more than the context length {context_length}; shorten it or pass '
                        'truncate=True')
                framed = framed[:context_length]
                framed[-1] = self.eot_token
            result[row, :len(framed)] = torch.tensor(framed, dtype=torch.long)
        return result

    def __call__(self,
                 texts: Union[str, Sequence[str]],
                 context_length: int = CONTEXT_LENGTH,
                 truncate: bool = False) -> Tensor:
        """See :func:`tokenize`."""
        if isinstance(texts, str):
            texts = [texts]
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f'tokenize() expects strings, got {type(text).__name__} '
                                f'at index {i}')
        return self.pack([self.encode(t) for t in texts], context_length, truncate)


@functools.lru_cache(maxsize=4)
def get_tokenizer(bpe_path: Optional[str] = None) -> SimpleTokenizer:
    """The shared tokenizer for ``bpe_path`` (built once per process)."""
    return SimpleTokenizer(bpe_path)


def tokenize(texts: Union[str, Sequence[str]],
             context_length: int = CONTEXT_LENGTH,
             truncate: bool = False) -> Tensor:
    """Tokenize texts like OpenAI's ``clip.tokenize``.

    Each row is ``[SOT, ids..., EOT, 0, ...]``.

    Args:
        texts (str | Sequence[str]): One text or a list of texts.
        context_length (int): Row length (77 for every released CLIP).
        truncate (bool): Cut over-long texts to ``context_length`` tokens,
            keeping EOT as the last one, instead of raising.

    Returns:
        Tensor: Long tensor of shape (len(texts), context_length).

    Raises:
        ValueError: When a text does not fit and ``truncate`` is False.
    """
    return get_tokenizer()(texts, context_length, truncate)
