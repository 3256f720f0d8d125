"""Class-name x prompt-template text embeddings, with an on-disk cache.

The cache is keyed by the checkpoint's identity, names, templates and dtype
(docs/method.md, "Offline: text embeddings").
"""
import hashlib
import json
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...utils.class_names import ClassName
from ...utils.hashing import CACHE_ENV, cache_root
from ...utils.io import atomic_open
from .prompts import text_key
from .tokenizer import get_tokenizer

__all__ = [
    'build_text_classifier', 'default_text_cache_dir', 'class_prompt_names', 'tokenize_prompts',
    'CACHE_ENV', 'SYNONYM_RULES', 'check_synonyms', 'text_rows'
]

#: How a class with synonyms is scored (docs/method.md, "Synonyms"):
#: ``'joined'`` puts them, joined with ',', in one prompt (TagCLIP's and
#: CLIP-ES's class names); ``'max'`` embeds each name on its own and gives the
#: class the largest of its names' probabilities (SCLIP, ProxyCLIP and peers).
SYNONYM_RULES = ('joined', 'max')
_CACHE_FORMAT = 1


def default_text_cache_dir() -> str:
    """``$TAGCLIP_MMSEG_CACHE/text_embeddings`` or its default under ``~/.cache``."""
    return osp.join(cache_root(), 'text_embeddings')


def class_prompt_names(class_names: Sequence[ClassName]) -> List[str]:
    """Validate a vocabulary and return the string put in each template.

    Synonyms are joined with ',' inside one prompt, as CLIP-ES does.

    Raises:
        ValueError: Empty vocabulary, a non-string or empty name, or two
            classes that CLIP would read as the same text.
    """
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise ValueError(f'class_names must be a list of names, got {type(class_names).__name__}')
    if not class_names:
        raise ValueError('class_names is empty; give at least one class name')
    names = []
    for i, name in enumerate(class_names):
        synonyms = [name] if isinstance(name, str) else name
        if (not isinstance(synonyms, Sequence) or not synonyms
                or not all(isinstance(s, str) and s.strip() for s in synonyms)):
            raise ValueError(f'class {i} ({name!r}) must be a non-empty string or a non-empty '
                             'list of non-empty strings (synonyms)')
        names.append(','.join(s.strip() for s in synonyms))
    # The tokenizer lower-cases and collapses whitespace: compare what CLIP sees.
    seen: Dict[str, int] = {}
    duplicates = []
    for i, name in enumerate(names):
        key = text_key(name)
        if key in seen:
            duplicates.append(f'{class_names[seen[key]]!r} (index {seen[key]}) and '
                              f'{class_names[i]!r} (index {i})')
        seen.setdefault(key, i)
    if duplicates:
        raise ValueError('duplicate class names would get identical embeddings: ' +
                         '; '.join(duplicates) + '. Remove or rename them.')
    return names


def check_synonyms(synonyms: str) -> str:
    """Validate a synonym rule (one of :data:`SYNONYM_RULES`)."""
    if synonyms not in SYNONYM_RULES:
        raise ValueError(f'synonyms must be one of {SYNONYM_RULES}, got {synonyms!r}')
    return synonyms


def text_rows(class_names: Sequence[ClassName], synonyms: str) -> Tuple[List[ClassName], List[int]]:
    """The texts that get one embedding each, and the class of each text.

    ``'joined'``: one text per class (its synonyms stay together). ``'max'``:
    one text per name, class-major, so a class's names are consecutive rows.
    """
    if check_synonyms(synonyms) == 'joined':
        return list(class_names), list(range(len(class_names)))
    rows = [[n] if isinstance(n, str) else list(n) for n in class_names]
    return ([name for names in rows for name in names],
            [c for c, names in enumerate(rows) for _ in names])


def _check_templates(templates: Sequence[str]) -> List[str]:
    if isinstance(templates, str) or not isinstance(templates, Sequence) or not templates:
        raise ValueError('templates must be a non-empty list of strings with one "{}" each')
    bad = [t for t in templates if not isinstance(t, str) or t.count('{}') != 1]
    if bad:
        raise ValueError(f'each template needs exactly one "{{}}" for the class name; '
                         f'bad: {bad[:5]}')
    if len(set(templates)) != len(templates):
        raise ValueError('templates contain duplicates, which would weight them twice in the mean')
    return list(templates)


def _cache_key(checkpoint_id: str, names: Sequence[ClassName], templates: Sequence[str],
               dtype: torch.dtype, context_length: int, truncate: bool,
               synonyms: str) -> Tuple[str, str]:
    """Canonical JSON of what the embeddings depend on, and its SHA-256."""
    spec = dict(
        format=_CACHE_FORMAT,
        checkpoint=checkpoint_id,
        class_names=[n if isinstance(n, str) else list(n) for n in names],
        synonyms=synonyms,
        templates=list(templates),
        dtype=str(dtype),
        context_length=context_length,
        truncate=truncate)
    text = json.dumps(spec, sort_keys=True, ensure_ascii=False, separators=(',', ':'))
    return text, hashlib.sha256(text.encode('utf-8')).hexdigest()


def _read_cache(path: str, key_text: str, num_classes: int) -> Optional[Tensor]:
    """The cached embeddings, or None when absent, unreadable or stale."""
    if not osp.isfile(path):
        return None
    try:
        entry = torch.load(path, map_location='cpu', weights_only=True)
        emb = entry['embeddings']
        ok = (entry.get('key') == key_text and isinstance(emb, Tensor) and emb.dim() == 2
              and emb.shape[0] == num_classes and bool(torch.isfinite(emb).all()))
    except Exception as e:  # noqa: BLE001  (any unreadable file is just a miss)
        warnings.warn(f'ignoring unreadable text-embedding cache {path!r} ({e}); recomputing')
        return None
    if not ok:
        warnings.warn(f'ignoring invalid text-embedding cache {path!r}; recomputing')
        return None
    return emb


def _write_cache(path: str, key_text: str, embeddings: Tensor) -> None:
    try:
        with atomic_open(path, 'wb') as f:
            torch.save({'key': key_text, 'embeddings': embeddings.detach().cpu()}, f)
    except OSError as e:
        warnings.warn(f'cannot write the text-embedding cache {path!r} ({e}); continuing '
                      f'without it (set {CACHE_ENV} to a writable folder)')


def tokenize_prompts(class_names: Sequence[ClassName], templates: Sequence[str],
                     context_length: int = 77, truncate: bool = False) -> Tensor:
    """Token rows of every prompt, class-major.

    Raises:
        ValueError: Invalid vocabulary or templates, or a prompt longer than
            ``context_length`` tokens while ``truncate`` is False.
    """
    names = class_prompt_names(class_names)
    templates = _check_templates(templates)
    prompts = [t.format(name) for name in names for t in templates]
    tokenizer = get_tokenizer()
    ids = [tokenizer.encode(p) for p in prompts]
    too_long = [i for i, t in enumerate(ids) if len(t) + 2 > context_length]
    if too_long:
        classes = sorted({i // len(templates) for i in too_long})
        detail = ', '.join(repr(class_names[c]) for c in classes[:5])
        if not truncate:
            raise ValueError(
                f"class name(s) {detail} make prompts longer than CLIP's {context_length}-token "
                f'context (e.g. {prompts[too_long[0]]!r}); shorten them, or cut the prompts with '
                'truncate_prompts=True (model config, TagCLIPInferencer(truncate_prompts=True) '
                "or the demo's --truncate-prompts)")
        warnings.warn(f'truncating prompts of class(es) {detail} to {context_length} tokens')
    return tokenizer.pack(ids, context_length, truncate=True)


def _encode_prompts(clip: nn.Module, tokens: Tensor, batch_size: int) -> Tensor:
    """L2-normalised text embeddings of token rows, (P, E) in fp32.

    Autocast is off: the cache key does not include it.
    """
    lengths = tokens.argmax(dim=-1) + 1
    device = next(clip.parameters()).device
    out: Optional[Tensor] = None
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        for rows, length in _length_batches(lengths, batch_size):
            emb = F.normalize(clip.encode_text(tokens[rows, :length].to(device)).float(), dim=-1)
            if out is None:
                out = emb.new_empty(len(tokens), emb.shape[-1])
            out[rows.to(device)] = emb
    return out


def _length_batches(lengths: Tensor, batch_size: int) -> List[Tuple[Tensor, int]]:
    """Batches of prompt indices of similar length, each with its longest length.

    Exact under the causal mask (docs/performance.md, "First launch: prompts
    cut at their batch's longest token").
    """
    order = torch.sort(lengths, stable=True).indices
    return [(rows, int(lengths[rows].max())) for rows in order.split(batch_size)]


def build_text_classifier(clip: nn.Module,
                          class_names: Sequence[ClassName],
                          templates: Sequence[str],
                          cache_dir: Optional[str] = None,
                          checkpoint_id: Optional[str] = None,
                          batch_size: int = 256,
                          truncate: bool = False,
                          use_cache: bool = True,
                          synonyms: str = 'joined') -> Tensor:
    """One unit-norm text embedding per text row (:func:`text_rows`).

    The mean of the normalised prompt embeddings, normalised again
    (docs/method.md, "TagCLIP's classifier text").

    Args:
        clip (nn.Module): A CLIP with ``encode_text`` (and ``context_length``).
        class_names (Sequence[str | Sequence[str]]): The vocabulary; a list of
            synonyms is joined with ',' inside each prompt.
        templates (Sequence[str]): Templates with one ``{}`` each, e.g.
            :data:`~tagclip_mmseg.models.clip.prompts.TAGCLIP_TEMPLATES`.
        cache_dir (str, optional): Cache folder; defaults to
            :func:`default_text_cache_dir`.
        checkpoint_id (str, optional): Identity of the CLIP weights for the
            cache key; defaults to the CLIP's ``checkpoint_fingerprint``.
            Without either, nothing is cached.
        batch_size (int): Prompts per text-encoder forward.
        truncate (bool): Truncate prompts longer than the context (with a
            warning) instead of raising.
        use_cache (bool): Read and write the on-disk cache.
        synonyms (str): ``'joined'`` (one row per class) or ``'max'`` (one
            row per name); see :data:`SYNONYM_RULES`.

    Returns:
        Tensor: (R, E) fp32 embeddings on the CLIP's device, one per row of
        :func:`text_rows` (R = C under ``'joined'``).

    Raises:
        ValueError: Invalid vocabulary or templates, or a class name too long
            for the context (unless ``truncate``).
    """
    class_prompt_names(class_names)  # validate the vocabulary as given
    rows, _ = text_rows(class_names, synonyms)
    names = class_prompt_names(rows)
    templates = _check_templates(templates)
    if batch_size < 1:
        raise ValueError(f'batch_size must be positive, got {batch_size}')
    device = next(clip.parameters()).device
    dtype = next(clip.parameters()).dtype
    checkpoint_id = checkpoint_id or getattr(clip, 'checkpoint_fingerprint', None)
    cache_path = key_text = None
    if use_cache and checkpoint_id:
        key_text, digest = _cache_key(checkpoint_id, class_names, templates, dtype,
                                      int(getattr(clip, 'context_length', 77)), truncate,
                                      synonyms)
        cache_path = osp.join(cache_dir or default_text_cache_dir(), f'{digest}.pt')
        cached = _read_cache(cache_path, key_text, len(names))
        if cached is not None:
            return cached.to(device)

    tokens = tokenize_prompts(rows, templates, int(getattr(clip, 'context_length', 77)), truncate)
    per_prompt = _encode_prompts(clip, tokens, batch_size)
    embeddings = F.normalize(per_prompt.view(len(names), len(templates), -1).mean(dim=1), dim=-1)
    if cache_path is not None:
        _write_cache(cache_path, key_text, embeddings)
    return embeddings
