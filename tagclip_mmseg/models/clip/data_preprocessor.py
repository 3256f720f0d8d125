"""Normalisation of variable-size images for the training-free CLIP models.

Padding would change the results, so images of different sizes stay a list
and the models group equal sizes themselves.
"""
from typing import Dict, List, Sequence, Union

import torch
from mmengine.model import BaseDataPreprocessor
from mmseg.registry import MODELS
from torch import Tensor

from ...utils.init_args import RecordsInitArgs
from ...utils.token_grid import group_indices

__all__ = ['CLIPDataPreprocessor', 'group_by_shape', 'CLIP_MEAN', 'CLIP_STD']

#: OpenAI CLIP normalisation, in 0-255 pixel units.
CLIP_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD = (68.5005327, 66.6321579, 70.32316305)


def group_by_shape(images: Sequence[Tensor]) -> List[List[int]]:
    """Indices of ``images`` grouped by (H, W), in order of first appearance."""
    return list(group_indices(tuple(img.shape[-2:]) for img in images).values())


@MODELS.register_module()
class CLIPDataPreprocessor(RecordsInitArgs, BaseDataPreprocessor):
    """Cast RGB uint8 images to float and normalise with CLIP's statistics.

    Args:
        mean (Sequence[float]): Per-channel mean in 0-255 units (RGB).
        std (Sequence[float]): Per-channel std in 0-255 units (RGB).
        bgr_to_rgb (bool): Flip channels first, for pipelines that load BGR
            (mmcv's ``LoadImageFromFile``). The project's ``LoadImageRobust``
            already yields RGB.
    """

    def __init__(self,
                 mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD,
                 bgr_to_rgb: bool = False) -> None:
        super().__init__()
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(3, 1, 1), False)
        self.bgr_to_rgb = bgr_to_rgb

    def normalize(self, img: Tensor) -> Tensor:
        """Normalise one (3, H, W) or (B, 3, H, W) image tensor."""
        img = img.to(self.mean.device).float()
        if self.bgr_to_rgb:
            img = img.flip(-3)
        return (img - self.mean) / self.std

    def forward(self, data: dict, training: bool = False) -> Dict[str, Union[List[Tensor], list]]:
        """Cast ``data`` to the device and normalise its images."""
        data = self.cast_data(data)
        inputs = data['inputs']
        if isinstance(inputs, Tensor):
            inputs = list(inputs) if inputs.dim() == 4 else [inputs]
        return dict(inputs=[self.normalize(x) for x in inputs],
                    data_samples=data.get('data_samples'))
