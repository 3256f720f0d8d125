"""What the inferencer accepts as images, turned into one uniform list.

File paths, folders (not recursive) or numpy arrays, **RGB** by default; pass
``channel_order='bgr'`` for ``mmcv.imread``/``cv2.imread`` arrays, since a
swap would silently change CLIP's scores.
"""
import os
import os.path as osp
from typing import List, Sequence, Union

import numpy as np

from ..datasets.utils import list_images

__all__ = ['CHANNEL_ORDERS', 'InputItem', 'expand_inputs', 'array_to_rgb']

#: One input: a file path or an image array.
InputItem = Union[str, np.ndarray]
#: Channel orders of array inputs: RGB (PIL, matplotlib) or BGR (OpenCV, mmcv).
CHANNEL_ORDERS = ('rgb', 'bgr')


def expand_inputs(inputs: Union[InputItem, Sequence[InputItem]]) -> List[InputItem]:
    """A flat list of paths and arrays from a path, folder, array or sequence.

    Raises:
        FileNotFoundError: For a path that does not exist.
        TypeError: For anything else than paths and arrays.
    """
    if isinstance(inputs, (str, os.PathLike, np.ndarray)):
        inputs = [inputs]
    elif not isinstance(inputs, Sequence):
        raise TypeError('inputs must be an image path, a folder, a numpy array (H, W, 3) or a '
                        f'list of them, got {type(inputs).__name__}')
    items: List[InputItem] = []
    for position, item in enumerate(inputs):
        if isinstance(item, np.ndarray):
            items.append(item)
        elif isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            if osp.isdir(path):
                items.extend(list_images(path, recursive=False))
            elif osp.exists(path):
                items.append(path)
            else:
                raise FileNotFoundError(f'input {path!r} does not exist')
        else:
            raise TypeError('inputs must be image paths, folders or numpy arrays (H, W, 3), got '
                            f'{type(item).__name__} at inputs[{position}]')
    if not items:
        raise ValueError('no inputs given')
    return items


def array_to_rgb(array: np.ndarray, channel_order: str = 'rgb') -> np.ndarray:
    """Validate an image array and return it as contiguous RGB uint8 (H, W, 3).

    Grayscale (H, W) and (H, W, 1) arrays are replicated to three channels;
    a fourth (alpha) channel is dropped, as :func:`load_rgb_image` does.

    Args:
        array (np.ndarray): uint8 image.
        channel_order (str): ``'rgb'`` or ``'bgr'`` (``mmcv.imread``/OpenCV).

    Raises:
        ValueError: Wrong dtype, shape or channel order.
    """
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    if array.dtype != np.uint8:
        raise ValueError(f'image arrays must be uint8 (0-255), got {array.dtype}; convert floats '
                         'in [0, 1] with (x * 255).round().astype(np.uint8)')
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(f'image arrays must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), '
                         f'got shape {array.shape}')
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    array = array[..., :3]
    if channel_order == 'bgr':
        array = array[..., ::-1]
    return np.ascontiguousarray(array)
