"""Seeded random-weight CLIPs: the one factory behind tests, tools and the demo.

No CLIP weights can be downloaded here, so every check that needs "a CLIP"
builds one with random weights: the tests (tiny models), the benchmark and
batch-invariance tools (ViT-B/16-shaped or tiny) and the demo's pipeline
check. They all come from :func:`random_clip`, so a seed means the same
weights everywhere and no caller leaves the global RNG in a state that
depends on how big its model was.
"""
import os
from typing import Union

import torch

from ..models.clip import CLIP
from ..models.clip.checkpoint import save_clip_state_dict

__all__ = ['TINY_CLIP_ARCH', 'NARROW_CLIP_ARCH', 'random_clip']

#: Architecture of the tests' tiny CLIP: widths are multiples of 64 so that
#: OpenAI's ``heads = width // 64`` rule (used when reading a checkpoint)
#: gives 2 heads.
TINY_CLIP_ARCH = dict(embed_dim=32, image_resolution=64, vision_layers=3, vision_width=128,
                      vision_patch_size=16, context_length=77, vocab_size=49408,
                      transformer_width=128, transformer_heads=2, transformer_layers=2)

#: ViT-B/16's layout where the methods depend on it (patch 16 and token grids,
#: 12 vision layers for the default layer indices, 224 input for CWR crops
#: and the positional grid: :class:`CLIP`'s defaults) at a fraction of its
#: width, so that whole pipelines run in seconds on a CPU (the demo's
#: pipeline check, ``tools/batch_invariance.py --tiny``).
NARROW_CLIP_ARCH = dict(embed_dim=64, vision_width=128, transformer_width=64, transformer_heads=1,
                        transformer_layers=1)


def random_clip(seed: int = 0,
                path: Union[None, str, os.PathLike] = None,
                jitter: float = 0.0,
                **arch: int) -> CLIP:
    """A CLIP with seeded random weights, in eval mode, optionally saved.

    The global CPU RNG is seeded for the build and restored afterwards, so the
    same ``seed`` and ``arch`` always give the same weights and the caller's
    random stream is untouched.

    Args:
        seed: Seed of the weights.
        path: Where to save the state dict in OpenAI naming; the extension
            picks the format (``.pth``/``.pt``/``.bin``: ``torch.save``,
            ``.safetensors``), see
            :func:`~tagclip_mmseg.models.clip.checkpoint.save_clip_state_dict`.
        jitter: Standard deviation of Gaussian noise added to every
            parameter after the init. Random init leaves some parameters at
            constants (LayerNorm weights 1, biases 0); with noise, round-trip
            tests notice a parameter that failed to load.
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
