"""Seeded random-weight CLIPs for tests, tools and the demo's pipeline check."""
import os
from typing import Union

import torch

from .checkpoint import save_clip_state_dict
from .model import CLIP

__all__ = ['TINY_CLIP_ARCH', 'NARROW_CLIP_ARCH', 'random_clip']

#: The tests' tiny CLIP; widths are multiples of 64 (OpenAI's head rule).
TINY_CLIP_ARCH = dict(embed_dim=32, image_resolution=64, vision_layers=3, vision_width=128,
                      vision_patch_size=16, context_length=77, vocab_size=49408,
                      transformer_width=128, transformer_heads=2, transformer_layers=2)

#: ViT-B/16's layout (patch 16, 12 layers, 224 input) at a fraction of its
#: width, so whole pipelines run in seconds on a CPU.
NARROW_CLIP_ARCH = dict(embed_dim=64, vision_width=128, transformer_width=64, transformer_heads=1,
                        transformer_layers=1)


def random_clip(seed: int = 0,
                path: Union[None, str, os.PathLike] = None,
                jitter: float = 0.0,
                **arch: int) -> CLIP:
    """A CLIP with seeded random weights, in eval mode, optionally saved.

    The caller's global RNG state is left untouched.

    Args:
        seed: Seed of the weights.
        path: Where to save the state dict (see
            :func:`~tagclip_mmseg.models.clip.checkpoint.save_clip_state_dict`).
        jitter: Standard deviation of Gaussian noise added to every
            parameter, so no parameter stays at a constant init.
        **arch: Arguments of :class:`~tagclip_mmseg.models.clip.CLIP`; none
            gives ViT-B/16's architecture.

    Returns:
        CLIP: The model (fp32, eval mode).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**arch).eval()
        if jitter:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * jitter)
    if path is not None:
        save_clip_state_dict(model.state_dict(), os.fspath(path))
    return model
