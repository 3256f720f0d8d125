from .model import (CLIP, AttnCallback, CLIPAttention, LayerMasks, LayerNorm, QuickGELU,
                    ResidualAttentionBlock, Transformer, VisionTransformer, ViTOutput,
                    resample_pos_embed)

__all__ = [
    'CLIP', 'AttnCallback', 'CLIPAttention', 'LayerMasks', 'LayerNorm', 'QuickGELU',
    'ResidualAttentionBlock', 'Transformer', 'VisionTransformer', 'ViTOutput', 'resample_pos_embed'
]
