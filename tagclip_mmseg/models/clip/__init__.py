from .last_block_grad import LastBlockGrad
from .model import (CLIP, AttnCallback, CLIPAttention, LayerMasks, LayerNorm, QuickGELU,
                    ResidualAttentionBlock, Transformer, VisionTransformer, ViTOutput,
                    resample_pos_embed)

__all__ = [
    'CLIP', 'AttnCallback', 'CLIPAttention', 'LayerMasks', 'LayerNorm', 'QuickGELU',
    'ResidualAttentionBlock', 'Transformer', 'VisionTransformer', 'ViTOutput', 'resample_pos_embed',
    'LastBlockGrad'
]
from .checkpoint import (DEFAULT_CLIP_CHECKPOINT, CheckpointError, build_clip,
                         checkpoint_fingerprint, hf_to_openai_state_dict, infer_clip_arch,
                         load_clip, load_clip_state_dict, resolve_dtype, save_clip_state_dict)
from .random_clip import NARROW_CLIP_ARCH, TINY_CLIP_ARCH, random_clip
from .tokenizer import (CONTEXT_LENGTH, EOT_TOKEN, SOT_TOKEN, SimpleTokenizer, default_bpe_path,
                        get_tokenizer, tokenize)

__all__ += [
    'DEFAULT_CLIP_CHECKPOINT', 'CheckpointError', 'build_clip', 'checkpoint_fingerprint',
    'hf_to_openai_state_dict', 'infer_clip_arch', 'load_clip', 'load_clip_state_dict',
    'resolve_dtype', 'save_clip_state_dict', 'NARROW_CLIP_ARCH', 'TINY_CLIP_ARCH', 'random_clip',
    'CONTEXT_LENGTH', 'EOT_TOKEN', 'SOT_TOKEN',
    'SimpleTokenizer', 'default_bpe_path', 'get_tokenizer', 'tokenize'
]

# The vocabulary side of the frozen CLIP and the model base built on it.
from . import data_preprocessor, frozen_model, presets, prompts, text_classifier  # noqa: E402
from .data_preprocessor import *  # noqa: E402,F401,F403
from .frozen_model import *  # noqa: E402,F401,F403
from .presets import *  # noqa: E402,F401,F403
from .prompts import *  # noqa: E402,F401,F403
from .text_classifier import *  # noqa: E402,F401,F403

__all__ += (data_preprocessor.__all__ + frozen_model.__all__ + presets.__all__ + prompts.__all__
            + text_classifier.__all__)
