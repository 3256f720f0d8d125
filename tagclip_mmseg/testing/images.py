"""Random images on disk, and the folder config that tags them, for tool tests."""
import os
import os.path as osp
from typing import List, Sequence

import numpy as np
from PIL import Image

__all__ = ['FOLDER_CONFIG', 'FOLDER_IDS', 'random_photo', 'scores_file_option',
           'write_folder_images']

#: The tagging config for a plain folder of photos (relative to the repository root).
FOLDER_CONFIG = 'configs/tagclip/tagclip_vit-b16_folder.py'

#: Image ids :func:`write_folder_images` writes by default.
FOLDER_IDS = ('apple', 'boat', 'cloud', 'dune')


def random_photo(seed: int, w: int, h: int) -> Image.Image:
    """A seeded ``w`` x ``h`` RGB image of uniform noise.

    Args:
        seed (int): Seed of the noise.
        w (int): Width in pixels.
        h (int): Height in pixels.

    Returns:
        PIL.Image.Image: The image.
    """
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def write_folder_images(folder: str, ids: Sequence[str] = FOLDER_IDS, seed: int = 0) -> None:
    """Write one small random JPEG per id into ``folder`` (created if needed).

    Args:
        folder (str): Output folder.
        ids (Sequence[str]): Image ids (file stems). Defaults to :data:`FOLDER_IDS`.
        seed (int): Seed of the pixels.
    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, img_id in enumerate(ids):
        pixels = rng.integers(0, 256, (40 + 8 * (i % 3), 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(osp.join(folder, f'{img_id}.jpg'))


def scores_file_option(tags_file: str) -> List[str]:
    """The ``--cfg-options`` item that puts :data:`FOLDER_CONFIG`'s scores next to ``tags_file``.

    Args:
        tags_file (str): The tags file the run writes.

    Returns:
        list[str]: One ``--cfg-options`` item.
    """
    return [f'test_evaluator.0.scores_file={tags_file}.scores.jsonl']
