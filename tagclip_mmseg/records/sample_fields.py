"""Read access to per-image outputs, as data samples or their ``to_dict()`` form.

mmengine's ``Evaluator`` hands metrics plain dicts; tests and tools pass data
samples. Also the one rule for naming an image's output files.
"""
import os.path as osp
from typing import Any, List, Mapping, Optional, Union

import numpy as np
import torch

from ..datasets.utils import MISSING_IMAGES_KEY
from ..utils.paths import safe_join

__all__ = ['get_field', 'pixel_data', 'image_id', 'load_error', 'missing_images']

Sample = Union[Mapping[str, Any], Any]


def get_field(sample: Sample, key: str, default: Any = None) -> Any:
    """Return ``sample[key]`` for a dict or a data element, else ``default``."""
    if isinstance(sample, Mapping) or hasattr(sample, 'get'):
        return sample.get(key, default)
    return getattr(sample, key, default)


def pixel_data(field: Any) -> Optional[torch.Tensor]:
    """The tensor inside a ``PixelData`` or its dict; ``None`` for a missing field."""
    if field is None:
        return None
    if isinstance(field, Mapping):
        field = field.get('data')
    elif not isinstance(field, (torch.Tensor, np.ndarray)) and hasattr(field, 'data'):
        field = field.data  # PixelData
    if field is None:
        return None
    return torch.as_tensor(field)


def image_id(sample: Sample) -> str:
    """The id that names an image's output files: ``img_id``, else the file stem.

    Raises:
        KeyError: When the sample has neither ``img_id`` nor ``img_path``.
    """
    img_id = get_field(sample, 'img_id')
    if img_id is not None:
        return str(img_id)
    img_path = get_field(sample, 'img_path')
    if img_path is None:
        raise KeyError('data sample has neither "img_id" nor "img_path" in its metainfo; '
                       'add one of them to the dataset info or to PackInputs meta_keys')
    return osp.splitext(osp.basename(str(img_path)))[0]


def load_error(sample: Sample) -> Optional[str]:
    """The reason an image could not be loaded, or ``None`` when it loaded."""
    error = get_field(sample, 'load_error')
    return None if error is None or error == '' else str(error)


def missing_images(dataset_meta: Optional[Mapping], folder: str) -> List[dict]:
    """The images the dataset listed but could not find, ids checked against ``folder``.

    Raises:
        UnsafePathError: For an id that would leave ``folder``.
    """
    missing = list((dataset_meta or {}).get(MISSING_IMAGES_KEY, ()))
    for record in missing:
        safe_join(folder, record['img_id'])
    return missing
