"""Robust image decoding with PIL: any mode in, RGB uint8 out.

Every image the models see goes through :func:`load_rgb_image`, and every
grid prediction through :func:`read_image_size`, so the two agree on sizes
(docs/implementation.md, "Image decoding").
"""
import os
import os.path as osp
import threading
import warnings
from typing import Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    'IMG_EXTENSIONS', 'ImageLoadError', 'DEFAULT_MAX_PIXELS', 'load_rgb_image', 'read_image_size',
    'pil_to_rgb_array'
]

#: File extensions a folder scan takes for images (lower case): formats
#: :func:`load_rgb_image` reads.
IMG_EXTENSIONS: Tuple[str, ...] = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff',
                                   '.webp', '.ppm', '.pgm', '.pbm')

#: Largest image (in pixels, H * W after EXIF rotation) decoded by default.
DEFAULT_MAX_PIXELS = 256 * 1024 * 1024

_EXIF_ORIENTATION_TAG = 0x0112
#: The transpose that makes each EXIF orientation upright (the table that
#: ``ImageOps.exif_transpose`` applies). Orientations 5-8 swap W and H.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)

# ``Image.MAX_IMAGE_PIXELS`` is lifted for one open only, under a lock.
_MAX_PIXELS_LOCK = threading.Lock()


class ImageLoadError(OSError):
    """An image file could not be read; ``reason`` says why in a few words.

    Args:
        path (str): The file that failed.
        reason (str): What is wrong with it (missing, empty, truncated...).
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f'cannot load image {path!r}: {reason}')

    def __reduce__(self):
        # Keeps the exception picklable across dataloader worker processes.
        return type(self), (self.path, self.reason)


def _check_file(path: str) -> None:
    """Turn the common file-system problems into precise reasons early."""
    if not osp.exists(path):  # a dangling link exists (lexists) but has no file behind it
        raise ImageLoadError(path, 'file not found (broken symbolic link)'
                             if osp.islink(path) else 'file not found')
    if osp.isdir(path):
        raise ImageLoadError(path, 'is a directory, not an image file')
    if not os.access(path, os.R_OK):
        raise ImageLoadError(path, 'permission denied (file is not readable)')
    if osp.getsize(path) == 0:
        raise ImageLoadError(path, 'empty file (0 bytes)')


def _open(path: str) -> Image.Image:
    """``Image.open`` without PIL's decompression-bomb limit (see module doc)."""
    with _MAX_PIXELS_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', Image.DecompressionBombWarning)
                return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _exif_orientation(img: Image.Image) -> int:
    """The EXIF Orientation tag (1 when absent or unreadable)."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        return int(value) if value in range(1, 9) else 1
    except Exception:  # malformed EXIF must not make an image unreadable
        return 1


def _oriented_size(img: Image.Image, exif_transpose: bool) -> Tuple[int, int]:
    """(H, W) of ``img`` as it will be decoded."""
    w, h = img.size
    if exif_transpose and _exif_orientation(img) in _TRANSPOSING_ORIENTATIONS:
        h, w = w, h
    return h, w


def _check_pixels(path: str, size: Tuple[int, int], max_pixels: Optional[int]) -> None:
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        raise ImageLoadError(
            path, f'image is {size[1]}x{size[0]} = {size[0] * size[1]} pixels, more than '
            f'max_pixels={max_pixels}; raise max_pixels if the image is legitimate')


def read_image_size(path: str,
                    exif_transpose: bool = True,
                    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Tuple[int, int]:
    """(H, W) of an image from its header only, as :func:`load_rgb_image` returns it.

    Args:
        path (str): Image file.
        exif_transpose (bool): Apply the EXIF orientation (swap H and W for
            rotated photos). Must match the loader's setting.
        max_pixels (int, optional): Same limit as the loader.

    Raises:
        ImageLoadError: When the header cannot be read.
    """
    _check_file(path)
    try:
        with _open(path) as img:
            size = _oriented_size(img, exif_transpose)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(path, 'not a recognised image format') from None
    except Exception as e:
        raise ImageLoadError(path, f'unreadable header ({type(e).__name__}: {e})') from e
    _check_pixels(path, size, max_pixels)
    return size


def _high_bit_depth_to_uint8(img: Image.Image) -> np.ndarray:
    """Scale a 16/32-bit integer or float single-channel image to uint8 (H, W)."""
    arr = np.asarray(img)
    if img.mode == 'F':
        arr = arr.astype(np.float64)
        finite = np.isfinite(arr)
        if not finite.any():
            return np.zeros(arr.shape, np.uint8)
        lo, hi = arr[finite].min(), arr[finite].max()
        scaled = (np.where(finite, arr, lo) - lo) / max(hi - lo, 1e-12)
        return np.round(scaled * 255).astype(np.uint8)
    # 'I;16*' holds 0..65535; 'I' (int32) is how PIL opens most 16-bit PNGs
    # and TIFFs, also 0..65535. Values outside that range are clipped.
    arr = np.clip(arr.astype(np.int64), 0, 65535)
    return ((arr * 255 + 32767) // 65535).astype(np.uint8)


def pil_to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode to an RGB uint8 (H, W, 3) array.

    See the module docstring for how each mode is handled.
    """
    if img.mode in ('I', 'F') or img.mode.startswith('I;16'):
        gray = _high_bit_depth_to_uint8(img)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1))
    if img.mode != 'RGB':
        img = img.convert('RGB')
    return np.array(img, dtype=np.uint8)


def load_rgb_image(path: str,
                   exif_transpose: bool = True,
                   max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode any image file to an RGB uint8 (H, W, 3) array.

    The whole file is decoded, so corrupt data fails here, not in a model.

    Args:
        path (str): Image file.
        exif_transpose (bool): Turn EXIF-rotated photos upright.
        max_pixels (int, optional): Refuse images with more pixels than this
            (None: no limit).

    Raises:
        ImageLoadError: Missing file, directory, unreadable permissions, empty
            file, unknown format, truncated/corrupt data, or too many pixels.
    """
    _check_file(path)
    try:
        with _open(path) as img:
            _check_pixels(path, _oriented_size(img, exif_transpose), max_pixels)
            orientation = _exif_orientation(img) if exif_transpose else 1
            img.load()
            if orientation != 1:
                # Same table as ImageOps.exif_transpose, driven by the
                # orientation read_image_size saw, so sizes always agree.
                img = img.transpose(_ORIENTATION_TRANSPOSE[orientation])
            return pil_to_rgb_array(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(path, 'not a recognised image format') from None
    except PermissionError:
        raise ImageLoadError(path, 'permission denied (file is not readable)') from None
    except OSError as e:
        raise ImageLoadError(path, f'truncated or corrupt image data ({e})') from e
    except Exception as e:  # PIL plugins also raise SyntaxError/ValueError/...
        raise ImageLoadError(path, f'cannot decode ({type(e).__name__}: {e})') from e
