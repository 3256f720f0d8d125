"""Random CLIP checkpoints, the timed models and their inputs."""
import argparse
import os
import os.path as osp
import re
from typing import List, Tuple

import torch

__all__ = [
    'ROOT', 'DEMO_PHOTOS', 'TINY_ARCH', 'parse_size', 'make_checkpoint', 'model_settings',
    'build_tagger', 'build_labeler', 'random_images', 'cam_samples', 'rounded', 'size_label',
    'demo_photos'
]

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_PHOTOS = osp.join(ROOT, 'demo', 'images')

#: A narrow CLIP with ViT-B/16's depth, so the default layer indices
#: (``avg_layers=(8, 9, 10)``, ``caa_layers=range(4, 11)``) stay valid.
TINY_ARCH = dict(embed_dim=32, image_resolution=64, vision_layers=12, vision_width=64,
                 vision_patch_size=16, transformer_width=64, transformer_heads=1,
                 transformer_layers=2)


def parse_size(text: str) -> Tuple[int, int]:
    """``'HxW'`` -> (H, W)."""
    m = re.fullmatch(r'(\d+)[xX](\d+)', text.strip())
    if not m or min(int(m.group(1)), int(m.group(2))) < 1:
        raise argparse.ArgumentTypeError(f'expected HEIGHTxWIDTH such as 384x512, got {text!r}')
    return int(m.group(1)), int(m.group(2))


def make_checkpoint(work_dir: str, tiny: bool, seed: int) -> str:
    """Save a ViT-B/16-shaped (or tiny) random CLIP as a plain state dict.

    Returns:
        str: The file, reused when ``work_dir`` already has it.
    """
    from tagclip_mmseg.models.clip.random_clip import random_clip
    path = osp.join(work_dir, 'clip_tiny.pth' if tiny else 'clip_vit-b16_random.pth')
    if not osp.isfile(path):
        random_clip(seed, path, **(TINY_ARCH if tiny else {}))
    return path


def model_settings(args: argparse.Namespace, ckpt: str, cache_dir: str) -> dict:
    """The model arguments every part sets, in the process or in a config.

    Returns:
        dict: ``clip``, ``quirks``, ``text_cache_dir`` and ``autocast``.
    """
    return dict(clip=dict(checkpoint=ckpt, dtype=args.dtype), quirks=args.quirks,
                text_cache_dir=cache_dir, autocast=args.autocast)


def build_tagger(args: argparse.Namespace, ckpt: str, cache_dir: str, device: torch.device):
    """The timed ``TagCLIP`` on the VOC vocabulary."""
    from tagclip_mmseg.testing.models import VOC_TAGGER, build_tagger
    settings = model_settings(args, ckpt, cache_dir)
    return build_tagger(settings.pop('clip'), **settings, **VOC_TAGGER).to(device)


def build_labeler(args: argparse.Namespace, ckpt: str, cache_dir: str, device: torch.device):
    """The timed ``CLIPESPseudoLabeler`` on the VOC vocabulary."""
    from tagclip_mmseg.testing.models import VOC_LABELER, build_labeler
    settings = model_settings(args, ckpt, cache_dir)
    return build_labeler(settings.pop('clip'), **settings, **VOC_LABELER).to(device)


def rounded(hw: Tuple[int, int], patch: int) -> Tuple[int, int]:
    """The size ``ResizeToPatchMultiple`` gives an image of ``hw``."""
    from tagclip_mmseg.utils.token_grid import patch_grid
    rows, cols = patch_grid(hw[0], hw[1], patch)
    return rows * patch, cols * patch


def size_label(hw: Tuple[int, int], patch: int) -> str:
    """``'HxW (T tok)'``, T counting the [CLS] token."""
    from tagclip_mmseg.utils.token_grid import patch_grid
    rows, cols = patch_grid(hw[0], hw[1], patch)
    tokens = rows * cols + 1
    return f'{hw[0]}x{hw[1]} ({tokens} tok)'


def random_images(args: argparse.Namespace, hw: Tuple[int, int], patch: int, batch: int,
                  device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A seeded random batch at ``hw`` rounded up to the patch size."""
    gen = torch.Generator().manual_seed(args.seed)
    h, w = rounded(hw, patch)
    return torch.randn(batch, 3, h, w, generator=gen).to(device=device, dtype=dtype)


def cam_samples(batch: int, tags: List[int], hw: Tuple[int, int]) -> list:
    r"""``SegDataSample``\ s that give the labeler ``tags`` for each image."""
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(batch):
        s = SegDataSample()
        s.set_metainfo(dict(tags=list(tags), ori_shape=hw, img_path='benchmark.jpg'))
        samples.append(s)
    return samples


def demo_photos() -> List[str]:
    """Paths of the bundled demo photos, sorted."""
    names = sorted(f for f in os.listdir(DEMO_PHOTOS) if f.endswith(('.jpg', '.png')))
    return [osp.join(DEMO_PHOTOS, name) for name in names]
