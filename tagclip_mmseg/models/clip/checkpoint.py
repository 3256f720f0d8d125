"""Load CLIP ViT weights from any common checkpoint format into :class:`CLIP`.

OpenAI TorchScript archives, state dicts, open_clip and Hugging Face
checkpoints, model names and URLs (docs/clip_checkpoints.md).
"""
import hashlib
import json
import os
import os.path as osp
import re
import zipfile
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import torch
from mmseg.registry import MODELS
from torch import Tensor, nn

from ...utils.fetch import DEFAULT_CLIP_NAME, OPENAI_CLIP_URLS, resolve_checkpoint
from ...utils.hashing import file_sha256
from ...utils.io import atomic_open, atomic_write_bytes
from ...utils.unpickling import refused_globals, unreadable_reason
from .model import CLIP

__all__ = [
    'CheckpointError', 'DEFAULT_CLIP_CHECKPOINT', 'load_clip_state_dict', 'infer_clip_arch',
    'load_clip', 'build_clip', 'checkpoint_fingerprint', 'save_clip_state_dict',
    'hf_to_openai_state_dict', 'resolve_dtype'
]

#: Where OpenAI's ``clip.load('ViT-B/16')`` caches the ViT-B/16 archive.
DEFAULT_CLIP_CHECKPOINT = '~/.cache/clip/ViT-B-16.pt'

#: Entries that are not parameters: the three ints OpenAI's TorchScript archive
#: carries as buffers, open_clip's (formerly persistent) causal mask, and the
#: position-id buffers of Hugging Face models.
_NON_PARAMETER_KEYS = frozenset({
    'input_resolution', 'context_length', 'vocab_size', 'attn_mask',
    'text_model.embeddings.position_ids', 'vision_model.embeddings.position_ids'
})
#: Keys every CLIP ViT state dict in OpenAI naming has.
_REQUIRED_KEYS = ('visual.conv1.weight', 'visual.class_embedding', 'visual.positional_embedding',
                  'visual.proj', 'token_embedding.weight', 'positional_embedding',
                  'text_projection', 'ln_final.weight')
#: Wrappers seen around state dicts (mmengine/Lightning ``state_dict``,
#: timm/DeiT-style ``model``, DDP ``module``).
_WRAPPER_KEYS = ('state_dict', 'model', 'module')
#: Prefixes added by DDP, ``torch.compile`` and training frameworks.
_STRIP_PREFIXES = ('module.', '_orig_mod.', 'model.')
#: Files that make a folder a checkpoint, in order of preference (Hugging Face
#: and open_clip hub layouts).
_FOLDER_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                 'pytorch_model.bin.index.json', 'open_clip_model.safetensors',
                 'open_clip_pytorch_model.bin')
_HEAD_WIDTH = 64  # OpenAI's rule: heads = width // 64

DTypeLike = Union[str, torch.dtype]
_DTYPES = {
    'fp32': torch.float32, 'float32': torch.float32, 'float': torch.float32,
    'fp16': torch.float16, 'float16': torch.float16, 'half': torch.float16,
    'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16
}


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used as a CLIP ViT.

    The message names the file and what is wrong with it (unreadable or
    truncated, not a CLIP, a ResNet CLIP, unexpected keys...).
    """


def _missing_file_message(path: str) -> str:
    return (f'CLIP checkpoint not found: {path!r}. Give a model name to fetch it '
            f'({", ".join(OPENAI_CLIP_URLS)}; {DEFAULT_CLIP_NAME!r} is what '
            "`clip.load('ViT-B/16')` caches at ~/.cache/clip/ViT-B-16.pt), an http(s) URL, or "
            'a local file; convert an open_clip or Hugging Face CLIP checkpoint with '
            '`python tools/convert_clip_checkpoint.py SRC DST`.')


def _resolve_files(path: str) -> Tuple[str, List[str]]:
    """Expand ``path`` and list the weight files it stands for.

    A folder (Hugging Face ``save_pretrained`` or open_clip hub layout) stands
    for its weights file, or for every shard listed in its index.

    Returns:
        tuple: The expanded path and the weight files.
    """
    path = resolve_checkpoint(path, DEFAULT_CLIP_CHECKPOINT)
    if not osp.exists(path):
        raise FileNotFoundError(_missing_file_message(path))
    if not osp.isdir(path):
        return path, [path]
    for name in _FOLDER_FILES:
        candidate = osp.join(path, name)
        if not osp.isfile(candidate):
            continue
        if not name.endswith('.index.json'):
            return path, [candidate]
        return path, _index_shards(candidate)
    raise CheckpointError(f'{path!r} is a folder without CLIP weights: expected one of '
                          f'{", ".join(_FOLDER_FILES)}')


def _index_shards(index_path: str) -> List[str]:
    """Shard files named by a Hugging Face ``*.index.json``."""
    try:
        with open(index_path, encoding='utf-8') as f:
            weight_map = json.load(f)['weight_map']
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f'cannot read the shard index {index_path!r}: {e}') from e
    folder = osp.dirname(index_path)
    shards = sorted({osp.join(folder, name) for name in weight_map.values()})
    missing = [s for s in shards if not osp.isfile(s)]
    if missing:
        raise CheckpointError(f'shard index {index_path!r} lists missing files: {missing}')
    return shards


def _is_torchscript(path: str) -> bool:
    """Whether ``path`` is a TorchScript archive rather than a ``torch.save`` file.

    Both are zip files; only TorchScript archives hold ``constants.pkl`` and a
    ``code/`` folder. Sniffing avoids a failing ``torch.jit.load`` on every
    plain checkpoint.
    """
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith('/constants.pkl') or '/code/' in n for n in names)


def _read_file(path: str, weights_only: bool) -> Any:
    """Deserialise one weights file on the CPU."""
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file  # optional dependency
            return load_file(path, device='cpu')
        if _is_torchscript(path):
            # OpenAI's archives are TorchScript; torch.load(weights_only=True)
            # rejects them (docs/compatibility.md, "Traps": TorchScript archives).
            return torch.jit.load(path, map_location='cpu').state_dict()
        return torch.load(path, map_location='cpu', weights_only=weights_only)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001  (every reader has its own error types)
        refused = refused_globals(path, e) if weights_only else None
        if refused is not None:
            raise CheckpointError(
                f'refusing to read CLIP checkpoint {path!r}: besides tensors, it asks to call '
                f'{", ".join(refused)} while it is loaded, which could run code from the file, '
                'so loading was refused. Nothing from it was executed. If you trust the file, '
                're-save it as plain weights with tools/convert_clip_checkpoint.py '
                '--unsafe-load.') from None
        raise CheckpointError(f'cannot read CLIP checkpoint {path!r}: '
                              f'{unreadable_reason(path, e)}') from None


def _unwrap(obj: Any, path: str) -> Dict[str, Tensor]:
    """Dig the tensor dict out of training-framework wrappers."""
    while isinstance(obj, Mapping):
        if any(isinstance(v, Tensor) for v in obj.values()):
            return {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    found = type(obj).__name__
    if isinstance(obj, Mapping):
        found += f' with keys {list(obj)[:8]}'
    raise CheckpointError(f'{path!r} holds no state dict (found {found}); expected a CLIP state '
                          'dict, possibly under "state_dict" or "model"')


def _strip_prefixes(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Remove DDP/compile/framework prefixes shared by every key."""
    changed = True
    while changed and sd:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


#: Hugging Face ``CLIPModel`` name pieces -> OpenAI names (after the layer
#: index has been handled).
_HF_BLOCK_MAP = {
    'self_attn.out_proj': 'attn.out_proj',
    'layer_norm1': 'ln_1',
    'layer_norm2': 'ln_2',
    'mlp.fc1': 'mlp.c_fc',
    'mlp.fc2': 'mlp.c_proj',
}
_HF_TOP_MAP = {
    'text_model.embeddings.token_embedding.weight': 'token_embedding.weight',
    'text_model.embeddings.position_embedding.weight': 'positional_embedding',
    'text_model.final_layer_norm.weight': 'ln_final.weight',
    'text_model.final_layer_norm.bias': 'ln_final.bias',
    'vision_model.embeddings.class_embedding': 'visual.class_embedding',
    'vision_model.embeddings.patch_embedding.weight': 'visual.conv1.weight',
    'vision_model.embeddings.position_embedding.weight': 'visual.positional_embedding',
    'vision_model.pre_layrnorm.weight': 'visual.ln_pre.weight',
    'vision_model.pre_layrnorm.bias': 'visual.ln_pre.bias',
    'vision_model.post_layernorm.weight': 'visual.ln_post.weight',
    'vision_model.post_layernorm.bias': 'visual.ln_post.bias',
    'logit_scale': 'logit_scale',
}
_HF_LAYER = re.compile(r'^(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)$')


def hf_to_openai_state_dict(sd: Mapping[str, Tensor],
                            path: str = '<state dict>') -> Dict[str, Tensor]:
    """Rename a Hugging Face ``CLIPModel`` state dict to OpenAI's naming.

    Stacks ``q_proj``/``k_proj``/``v_proj`` into ``in_proj`` and transposes the
    projections.

    Raises:
        CheckpointError: For keys this map does not know (e.g. a vision-only
            or a non-CLIP Hugging Face model).
    """
    out: Dict[str, Tensor] = {}
    qkv: Dict[Tuple[str, str], Dict[str, Tensor]] = {}
    unknown = []
    for key, value in sd.items():
        if key in _NON_PARAMETER_KEYS:
            continue
        if key in _HF_TOP_MAP:
            out[_HF_TOP_MAP[key]] = value
            continue
        if key in ('visual_projection.weight', 'text_projection.weight'):
            out['visual.proj' if key.startswith('visual') else 'text_projection'] = value.t()
            continue
        m = _HF_LAYER.match(key)
        if m is None:
            unknown.append(key)
            continue
        tower, idx, rest = m.groups()
        prefix = f'{"visual." if tower == "vision" else ""}transformer.resblocks.{idx}.'
        qkv_match = re.match(r'^self_attn\.([qkv])_proj\.(weight|bias)$', rest)
        if qkv_match:
            qkv.setdefault((prefix, qkv_match.group(2)), {})[qkv_match.group(1)] = value
            continue
        module, _, param = rest.rpartition('.')
        if module not in _HF_BLOCK_MAP:
            unknown.append(key)
            continue
        out[f'{prefix}{_HF_BLOCK_MAP[module]}.{param}'] = value
    for (prefix, param), parts in qkv.items():
        if set(parts) != {'q', 'k', 'v'}:
            raise CheckpointError(f'{path!r}: attention of {prefix!r} lacks '
                                  f'{sorted({"q", "k", "v"} - set(parts))} projections')
        out[f'{prefix}attn.in_proj_{param}'] = torch.cat([parts['q'], parts['k'], parts['v']])
    if unknown:
        raise CheckpointError(f'{path!r} looks like a Hugging Face model but has keys that are '
                              f'not part of a CLIPModel: {unknown[:8]}')
    return out


def _open_clip_to_openai(sd: Dict[str, Tensor], path: str) -> Dict[str, Tensor]:
    """Fold open_clip's variations back into OpenAI naming.

    open_clip's ``CLIP`` already uses OpenAI's names; ``CustomTextCLIP`` nests
    the text tower under ``text.``, and some configs make the text projection
    an ``nn.Linear``.
    """
    if any(k.startswith('text.') for k in sd):
        sd = {(k[len('text.'):] if k.startswith('text.') else k): v for k, v in sd.items()}
    if 'text_projection.weight' in sd:
        if 'text_projection.bias' in sd:
            raise CheckpointError(f'{path!r}: a text projection with a bias is not an OpenAI '
                                  'CLIP architecture and is not supported')
        sd['text_projection'] = sd.pop('text_projection.weight').t()
    return sd


def _check_openai_keys(sd: Mapping[str, Tensor], path: str) -> None:
    if any(k.startswith(('visual.layer1.', 'visual.attnpool.')) for k in sd):
        raise CheckpointError(f'{path!r} is a ResNet CLIP; only vision-transformer CLIPs '
                              '(ViT-B/32, ViT-B/16, ViT-L/14, ...) are supported')
    missing = [k for k in _REQUIRED_KEYS if k not in sd]
    if missing:
        sample = list(sd)[:6]
        raise CheckpointError(f'{path!r} is not a CLIP ViT checkpoint: it lacks {missing} '
                              f'(its first keys are {sample})')


def _check_finite(sd: Mapping[str, Tensor], path: str) -> None:
    """Refuse weights holding NaN or inf, naming the tensors.

    One such value makes every score NaN, and NaN compares false everywhere:
    a run would "succeed" with class 0 tagged on every image. One pass over
    the weights at load costs a fraction of a second.
    """
    bad = [k for k, v in sd.items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f'{path!r} holds non-finite values (NaN or inf) in {len(bad)} tensors: '
            f'{bad[:10]}{" ..." if len(bad) > 10 else ""}. The file is damaged or was saved '
            'from a diverged model; download or convert the weights again')


def load_clip_state_dict(path: str, weights_only: bool = True) -> Dict[str, Tensor]:
    """Read a CLIP ViT checkpoint of any supported format, in OpenAI naming.

    Tensors keep the checkpoint's dtype (docs/clip_checkpoints.md lists the
    formats).

    Args:
        path (str): File or folder (``~`` is expanded), OpenAI model name or
            ``http(s)`` URL (fetched and verified first).
        weights_only (bool): Refuse pickled Python objects in ``torch.save``
            files (safe default). Pass False only for files you trust.

    Returns:
        dict[str, Tensor]: The parameters, on the CPU.

    Raises:
        FileNotFoundError: The path does not exist (message says how to get
            weights).
        FetchError: A name or URL could not be fetched or verified.
        CheckpointError: Unreadable, truncated, not a CLIP, a ResNet CLIP,
            or weights with NaN or inf (the message names the tensors).
    """
    resolved, files = _resolve_files(path)
    sd: Dict[str, Tensor] = {}
    for file in files:
        sd.update(_unwrap(_read_file(file, weights_only), file))
    sd = _strip_prefixes(sd)
    if any(k.startswith(('vision_model.', 'text_model.')) for k in sd):
        sd = hf_to_openai_state_dict(sd, resolved)
    else:
        sd = {k: v for k, v in sd.items() if k not in _NON_PARAMETER_KEYS}
        sd = _open_clip_to_openai(sd, resolved)
    _check_openai_keys(sd, resolved)
    _check_finite(sd, resolved)
    return sd


def _shape(value: Any) -> Tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, 'shape') else tuple(value)


def _count_blocks(keys: Sequence[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r'(\d+)\.')
    indices = {int(m.group(1)) for m in map(pattern.match, keys) if m}
    if indices and indices != set(range(len(indices))):
        raise CheckpointError(f'transformer blocks {sorted(indices)} under {prefix!r} are not '
                              'numbered 0..n-1')
    return len(indices)


def infer_clip_arch(state_dict: Mapping[str, Any], path: str = '<state dict>') -> Dict[str, int]:
    """Read :class:`CLIP`'s constructor arguments off a state dict's shapes.

    Follows OpenAI's ``build_model``. Values may be anything with ``.shape``.

    Returns:
        dict[str, int]: ``embed_dim``, ``image_resolution``, ``vision_layers``,
        ``vision_width``, ``vision_patch_size``, ``context_length``,
        ``vocab_size``, ``transformer_width``, ``transformer_heads``,
        ``transformer_layers``.

    Raises:
        CheckpointError: Missing keys or inconsistent shapes.
    """
    _check_openai_keys(state_dict, path)
    keys = list(state_dict)
    conv = _shape(state_dict['visual.conv1.weight'])  # (width, 3, p, p)
    vision_width, patch = conv[0], conv[-1]
    n_pos = _shape(state_dict['visual.positional_embedding'])[0] - 1
    grid = round(n_pos**0.5)
    if grid * grid != n_pos:
        raise CheckpointError(f'{path!r}: visual.positional_embedding has {n_pos} patch rows, '
                              'not a square grid')
    embed_dim = _shape(state_dict['text_projection'])[1]
    transformer_width = _shape(state_dict['ln_final.weight'])[0]
    arch = dict(
        embed_dim=embed_dim,
        image_resolution=patch * grid,
        vision_layers=_count_blocks(keys, 'visual.transformer.resblocks.'),
        vision_width=vision_width,
        vision_patch_size=patch,
        context_length=_shape(state_dict['positional_embedding'])[0],
        vocab_size=_shape(state_dict['token_embedding.weight'])[0],
        transformer_width=transformer_width,
        transformer_heads=transformer_width // _HEAD_WIDTH,
        transformer_layers=_count_blocks(keys, 'transformer.resblocks.'))
    problems = []
    if _shape(state_dict['visual.proj']) != (vision_width, embed_dim):
        problems.append(f'visual.proj is {_shape(state_dict["visual.proj"])}, expected '
                        f'{(vision_width, embed_dim)}')
    if _shape(state_dict['text_projection'])[0] != transformer_width:
        problems.append('text_projection rows differ from the text width')
    for name, width in (('vision', vision_width), ('text', transformer_width)):
        if width % _HEAD_WIDTH:
            problems.append(f'{name} width {width} is not a multiple of {_HEAD_WIDTH}, so the '
                            'head count cannot be inferred')
    if not arch['vision_layers'] or not arch['transformer_layers']:
        problems.append('no transformer blocks found')
    if problems:
        raise CheckpointError(f'{path!r} has an inconsistent CLIP ViT layout: ' +
                              '; '.join(problems))
    return arch


def resolve_dtype(dtype: DTypeLike) -> torch.dtype:
    """``'fp32'``/``'fp16'``/``'bf16'`` (or a ``torch.dtype``) -> ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f'CLIP dtype must be floating point, got {dtype}')
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f'unknown CLIP dtype {dtype!r}; use one of fp32, fp16, bf16') from None


def checkpoint_fingerprint(path: str) -> str:
    """The identity of a checkpoint's weights, for caches derived from them.

    Hashes each weight file's content with its name, so a copy elsewhere
    shares cache entries and an edited file does not.

    Args:
        path (str): File or checkpoint folder, as for :func:`load_clip_state_dict`.

    Returns:
        str: A hex SHA-256 digest.
    """
    _, files = _resolve_files(path)
    digest = hashlib.sha256()
    for file in files:
        digest.update(f'{osp.basename(file)}:{file_sha256(file)}\n'.encode())
    return digest.hexdigest()


def load_clip(checkpoint: str = DEFAULT_CLIP_CHECKPOINT,
              dtype: DTypeLike = 'fp32',
              device: Union[str, torch.device] = 'cpu',
              weights_only: bool = True) -> CLIP:
    """Build a frozen :class:`CLIP` from a checkpoint of any supported format.

    The architecture comes from the weights; the model is in eval mode with
    ``requires_grad=False`` and a ``checkpoint_fingerprint`` attribute.

    Args:
        checkpoint (str): Checkpoint file or folder, OpenAI model name
            (``'ViT-B/16'``) or ``http(s)`` URL (fetched and verified first).
        dtype (str | torch.dtype): ``'fp32'`` (TagCLIP classification),
            ``'fp16'`` (CLIP-ES CAMs on GPU) or ``'bf16'``.
        device (str | torch.device): Where to put the model.
        weights_only (bool): See :func:`load_clip_state_dict`.

    Returns:
        CLIP: The loaded model.
    """
    torch_dtype = resolve_dtype(dtype)
    path = resolve_checkpoint(checkpoint, DEFAULT_CLIP_CHECKPOINT)
    state_dict = load_clip_state_dict(path, weights_only=weights_only)
    model = CLIP(**infer_clip_arch(state_dict, path))
    _check_shapes(model.state_dict(), state_dict, path)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f'{path!r} does not match the CLIP ViT layout inferred from it: '
                              f'missing {missing[:8]}, unexpected {unexpected[:8]}')
    model.to(device=device, dtype=torch_dtype).eval().requires_grad_(False)
    model.checkpoint_fingerprint = checkpoint_fingerprint(path)
    return model


def _check_shapes(expected: Mapping[str, Tensor], state_dict: Mapping[str, Tensor],
                  path: str) -> None:
    """Name every tensor whose shape disagrees with the inferred layout."""
    wrong = [f'{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)}'
             for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise CheckpointError(f'{path!r} does not match the CLIP ViT layout inferred from it; '
                              f'wrong-shaped tensors: {"; ".join(wrong[:8])}'
                              + (f' (and {len(wrong) - 8} more)' if len(wrong) > 8 else ''))


MODELS.register_module(name='PretrainedCLIP', module=load_clip)


def build_clip(cfg: Union[nn.Module, str, Mapping[str, Any]]) -> nn.Module:
    """Turn a model's ``clip`` argument into a CLIP module.

    Accepts a module, a checkpoint path, ``dict(checkpoint=..., ...)``
    (arguments of :func:`load_clip`) or a registry config.
    """
    if isinstance(cfg, nn.Module):
        return cfg
    if isinstance(cfg, (str, os.PathLike)):
        return load_clip(os.fspath(cfg))
    if isinstance(cfg, Mapping):
        cfg = dict(cfg)
        if 'type' in cfg:
            return MODELS.build(cfg)
        return load_clip(**cfg)
    raise TypeError(f'clip must be a module, a checkpoint path or a config dict, got '
                    f'{type(cfg).__name__}')


def save_clip_state_dict(state_dict: Mapping[str, Tensor], path: str, fp16: bool = False) -> None:
    """Write a CLIP state dict in OpenAI naming, atomically.

    The extension picks the format: ``.safetensors``, or ``torch.save`` for
    ``.pth``/``.pt``/``.bin``.

    Args:
        state_dict (Mapping[str, Tensor]): Parameters in OpenAI naming.
        path (str): Destination file.
        fp16 (bool): Store floating-point tensors in fp16 (half the size;
            OpenAI's own weights are fp16).
    """
    path = osp.abspath(osp.expanduser(os.fspath(path)))
    infer_clip_arch(state_dict, path)
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().cpu()
        if fp16 and value.is_floating_point():
            value = value.half()
        # Own, contiguous storage: safetensors refuses shared or strided tensors.
        tensors[key] = value.contiguous().clone()
    if path.endswith('.safetensors'):
        from safetensors.torch import save  # optional dependency
        atomic_write_bytes(path, save(tensors, metadata={'format': 'pt', 'naming': 'openai-clip'}))
    elif path.endswith(('.pth', '.pt', '.bin')):
        with atomic_open(path, 'wb') as f:
            torch.save(tensors, f)
    else:
        raise ValueError(f'unsupported checkpoint extension for {path!r}; use .pth, .pt, .bin or '
                         '.safetensors')
