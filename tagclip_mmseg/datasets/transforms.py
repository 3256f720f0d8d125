"""Loading and resizing transforms for the training-free CLIP models.

Images stay RGB uint8 at their own size rounded up to the patch size
(docs/method.md, "Input size and positional-embedding resampling").
"""
import logging
import math
from typing import Optional, Tuple, Union

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.logging import print_log
from mmseg.registry import TRANSFORMS
from PIL import Image

from ..utils.init_args import RecordsInitArgs
from ..utils.token_grid import check_patch_args, patch_grid
from .image_io import DEFAULT_MAX_PIXELS, ImageLoadError, load_rgb_image, read_image_size

__all__ = ['image_grid', 'LoadImageRobust', 'ResizeToPatchMultiple']

_INTERPOLATIONS = {
    'nearest': Image.Resampling.NEAREST,
    'bilinear': Image.Resampling.BILINEAR,
    'bicubic': Image.Resampling.BICUBIC,
    'lanczos': Image.Resampling.LANCZOS,
    'box': Image.Resampling.BOX,
    'hamming': Image.Resampling.HAMMING,
}


def image_grid(image: Union[str, np.ndarray], patch_size: int = 16,
               max_tokens: Optional[int] = None, exif_transpose: bool = True,
               max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Tuple[int, int]:
    """The token grid an image will get, known before it is decoded.

    Files are sized from their header, arrays from their shape.

    Raises:
        ImageLoadError: When a file's header cannot be read.
    """
    if isinstance(image, np.ndarray):
        height, width = image.shape[:2]
    else:
        height, width = read_image_size(image, exif_transpose, max_pixels)
    return patch_grid(height, width, patch_size, max_tokens)


@TRANSFORMS.register_module()
class LoadImageRobust(RecordsInitArgs, BaseTransform):
    """Load an image of any mode/format as RGB uint8, surviving bad files.

    With ``on_error='skip'`` a broken file gets ``load_error`` and a black
    one-patch placeholder, which the test loop keeps away from the model.

    Required keys: ``img_path``.

    Added keys: ``img`` (RGB uint8), ``img_shape``, ``ori_shape``, ``ori_img``
    (with ``keep_ori_img``) and ``load_error`` (for a skipped file).

    Args:
        on_error (str): ``'skip'`` or ``'raise'``. Defaults to ``'skip'``.
        patch_size (int): Side of the placeholder image. Defaults to 16.
        exif_transpose (bool): Turn EXIF-rotated photos upright (benchmark
            configs set False). Defaults to True.
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
        check_patch_args(patch_size, None)
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

    The target is :func:`patch_grid` times ``patch_size``, resized with PIL as
    the reference does. Only ``img`` is resized; over ``max_tokens`` the image
    is scaled down with a warning.

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
        check_patch_args(patch_size, max_tokens)
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
