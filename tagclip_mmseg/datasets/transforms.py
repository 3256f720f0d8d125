"""Loading and resizing transforms for the training-free CLIP models.

A pipeline for the tagger or the pseudo-labeler is::

    LoadImageRobust -> ResizeToPatchMultiple -> [LoadAnnotations] -> Pack*

Images stay RGB uint8 (H, W, 3) all the way; the model's data preprocessor
normalises them. No crop, flip or fixed-size resize takes place: TagCLIP sees
each image at its own size rounded up to the patch size (docs/method.md §2.3).
"""
import logging
import math
from typing import Dict, Hashable, Iterable, List, Optional, Tuple, Union

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.logging import print_log
from PIL import Image

from mmseg.registry import TRANSFORMS
from ..utils.init_args import RecordsInitArgs
from .image_io import DEFAULT_MAX_PIXELS, ImageLoadError, load_rgb_image, read_image_size

__all__ = ['patch_grid', 'image_grid', 'group_indices', 'LoadImageRobust', 'ResizeToPatchMultiple']

_INTERPOLATIONS = {
    'nearest': Image.Resampling.NEAREST,
    'bilinear': Image.Resampling.BILINEAR,
    'bicubic': Image.Resampling.BICUBIC,
    'lanczos': Image.Resampling.LANCZOS,
    'box': Image.Resampling.BOX,
    'hamming': Image.Resampling.HAMMING,
}


def _check_patch_args(patch_size: int, max_tokens: Optional[int]) -> None:
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f'patch_size must be a positive integer, got {patch_size!r}')
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f'max_tokens must be None or a positive integer, got {max_tokens!r}')


def patch_grid(height: int, width: int, patch_size: int = 16,
               max_tokens: Optional[int] = None) -> Tuple[int, int]:
    """Token grid (rows, cols) of an image of ``height`` x ``width`` pixels.

    The grid is ``ceil(H / p) x ceil(W / p)`` (docs/method.md §2.3): the image is resized
    *up* to the next multiple of the patch size, and anything smaller than one
    patch becomes one patch. When that grid has more than ``max_tokens``
    tokens, the image is scaled down with its aspect ratio kept: the grid
    becomes ``floor(H*s/p) x floor(W*s/p)`` with ``s`` chosen so that the
    product equals ``max_tokens`` before flooring, each side at least 1 and
    the product never above ``max_tokens`` (very thin images keep one row or
    column and get up to ``max_tokens`` along the other side).

    This function is the single definition of the grid: the resize transform
    applies it and the grid-grouping sampler predicts batches with it.

    Args:
        height (int): Image height in pixels (>= 1).
        width (int): Image width in pixels (>= 1).
        patch_size (int): ViT patch size. Defaults to 16.
        max_tokens (int, optional): Token budget; None means no limit.

    Returns:
        tuple[int, int]: (rows, cols) of patches.
    """
    _check_patch_args(patch_size, max_tokens)
    if height < 1 or width < 1:
        raise ValueError(f'image size must be at least 1x1, got {height}x{width}')
    rows, cols = math.ceil(height / patch_size), math.ceil(width / patch_size)
    if max_tokens is None or rows * cols <= max_tokens:
        return rows, cols
    scale = math.sqrt(max_tokens * patch_size * patch_size / (height * width))
    rows = max(1, math.floor(height * scale / patch_size))
    cols = max(1, math.floor(width * scale / patch_size))
    if rows * cols > max_tokens:  # one side was clamped to a single patch
        if rows == 1:
            cols = max_tokens
        else:
            rows = max_tokens
    while rows * cols > max_tokens:  # guard against floating-point ties
        if rows >= cols:
            rows -= 1
        else:
            cols -= 1
    return rows, cols


def image_grid(image: Union[str, np.ndarray], patch_size: int = 16,
               max_tokens: Optional[int] = None, exif_transpose: bool = True,
               max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Tuple[int, int]:
    """The token grid an image will get, known before it is decoded.

    Files are sized from their header (:func:`read_image_size`, with the
    loader's ``exif_transpose`` and ``max_pixels``), arrays from their shape;
    batchers (the grid samplers, the inferencer) group images by this grid
    before loading any pixels.

    Raises:
        ImageLoadError: When a file's header cannot be read.
    """
    if isinstance(image, np.ndarray):
        height, width = image.shape[:2]
    else:
        height, width = read_image_size(image, exif_transpose, max_pixels)
    return patch_grid(height, width, patch_size, max_tokens)


def group_indices(keys: Iterable[Hashable]) -> Dict[Hashable, List[int]]:
    """Positions of equal keys, groups in order of first appearance.

    The one grouping of the package: images batch together only when their
    token grids are equal (predicted by :func:`image_grid` in the samplers
    and the inferencer, read off the resized tensors in the models'
    ``group_by_shape``), since padding would change the results.
    """
    groups: Dict[Hashable, List[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return groups


@TRANSFORMS.register_module()
class LoadImageRobust(RecordsInitArgs, BaseTransform):
    """Load an image of any mode/format as RGB uint8, surviving bad files.

    Decoding rules (modes, 16-bit scaling, alpha, EXIF orientation, large
    images) are documented in :mod:`tagclip_mmseg.datasets.image_io`.

    Large datasets always contain a few broken files (empty, truncated, a web
    page saved as ``.jpg``). With ``on_error='skip'`` such a file does not
    stop a multi-hour job: the sample gets ``load_error`` (the reason) and a
    black one-patch placeholder so that the batch still collates;
    ``ResumableTestLoop`` keeps samples with ``load_error`` away from the
    model and writers count them. ``on_error='raise'``
    fails at once with the file and the problem.

    Required keys: ``img_path``.

    Added keys: ``img`` (RGB uint8, (H, W, 3)), ``img_shape``, ``ori_shape``
    ((H, W) after EXIF rotation), ``ori_img`` (only with ``keep_ori_img``: the
    decoded original, e.g. for a CRF at full resolution) and ``load_error``
    (only for a skipped file). A placeholder's shapes are (p, p).

    Args:
        on_error (str): ``'skip'`` or ``'raise'``. Defaults to ``'skip'``.
        patch_size (int): Side of the placeholder image. Defaults to 16.
        exif_transpose (bool): Turn EXIF-rotated photos upright. Benchmark
            configs set False: COCO/VOC annotations refer to stored pixels.
            Defaults to True.
        max_pixels (int, optional): Refuse images above this many pixels
            (None: no limit). Defaults to 256 MP.
        keep_ori_img (bool): Also store the decoded image as ``ori_img``.
            Defaults to False.
    """

    def __init__(self,
                 on_error: str = 'skip',
                 patch_size: int = 16,
                 exif_transpose: bool = True,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
                 keep_ori_img: bool = False) -> None:
        if on_error not in ('skip', 'raise'):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        _check_patch_args(patch_size, None)
        self.on_error = on_error
        self.patch_size = patch_size
        self.exif_transpose = exif_transpose
        self.max_pixels = max_pixels
        self.keep_ori_img = keep_ori_img

    def transform(self, results: dict) -> dict:
        """Decode ``results['img_path']`` into ``results['img']``."""
        path = results['img_path']
        try:
            img = load_rgb_image(path, self.exif_transpose, self.max_pixels)
        except ImageLoadError as e:
            if self.on_error == 'raise':
                raise
            print_log(f'skipping image: {e}', logger='current', level=logging.WARNING)
            results['load_error'] = e.reason
            img = np.zeros((self.patch_size, self.patch_size, 3), np.uint8)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        if self.keep_ori_img:
            results['ori_img'] = img
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(on_error={self.on_error!r}, '
                f'patch_size={self.patch_size}, exif_transpose={self.exif_transpose}, '
                f'max_pixels={self.max_pixels}, keep_ori_img={self.keep_ori_img})')


@TRANSFORMS.register_module()
class ResizeToPatchMultiple(RecordsInitArgs, BaseTransform):
    """Resize the image to its size rounded up to a multiple of the patch size.

    The target is :func:`patch_grid` times ``patch_size``, resized in one step
    with PIL (bicubic by default), exactly as TagCLIP's reference does with a
    PIL image; an image already at its target is left untouched. Only
    ``img`` is resized: a ground-truth map loaded later by ``LoadAnnotations``
    stays at the original size, where predictions are evaluated.

    With ``max_tokens``, images whose grid would exceed the budget are scaled
    down (aspect ratio kept) and a warning names the image; results on such
    images differ from the reference, which has no budget.

    Required keys: ``img`` (uint8, (H, W) or (H, W, C)).

    Modified keys: ``img``, ``img_shape``. Added keys: ``scale_factor``
    ((w_scale, h_scale), mmcv's convention).

    Args:
        patch_size (int): ViT patch size. Defaults to 16.
        interpolation (str): PIL filter: 'bicubic' (reference), 'bilinear',
            'nearest', 'lanczos', 'box' or 'hamming'. Defaults to 'bicubic'.
        max_tokens (int, optional): Token budget per image. Defaults to None.
    """

    def __init__(self,
                 patch_size: int = 16,
                 interpolation: str = 'bicubic',
                 max_tokens: Optional[int] = None) -> None:
        _check_patch_args(patch_size, max_tokens)
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f'interpolation must be one of {sorted(_INTERPOLATIONS)}, '
                             f'got {interpolation!r}')
        self.patch_size = patch_size
        self.interpolation = interpolation
        self.max_tokens = max_tokens

    def transform(self, results: dict) -> dict:
        """Resize ``results['img']`` to the patch-multiple size."""
        img = results['img']
        if img.dtype != np.uint8:
            raise TypeError(f'ResizeToPatchMultiple expects a uint8 image, got {img.dtype} '
                            f'for {results.get("img_path")!r}; load it with LoadImageRobust')
        height, width = img.shape[:2]
        rows, cols = patch_grid(height, width, self.patch_size, self.max_tokens)
        if self.max_tokens is not None and rows * cols < (
                math.ceil(height / self.patch_size) * math.ceil(width / self.patch_size)):
            print_log(
                f'image {results.get("img_path")!r} ({width}x{height}) exceeds '
                f'max_tokens={self.max_tokens}; scaled down to a {rows}x{cols} token grid',
                logger='current', level=logging.WARNING)
        new_h, new_w = rows * self.patch_size, cols * self.patch_size
        if (new_h, new_w) != (height, width):
            resample = _INTERPOLATIONS[self.interpolation]
            img = np.array(Image.fromarray(img).resize((new_w, new_h), resample), dtype=np.uint8)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['scale_factor'] = (new_w / width, new_h / height)
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(patch_size={self.patch_size}, '
                f'interpolation={self.interpolation!r}, max_tokens={self.max_tokens})')
