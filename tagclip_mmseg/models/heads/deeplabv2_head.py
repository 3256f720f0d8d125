"""DeepLab-v2 ASPP classifier (docs/implementation.md, "The DeepLab-v2 head")."""
from typing import List, Optional, Sequence, Tuple, Union

import torch.nn as nn
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS
from torch import Tensor

__all__ = ['DeepLabV2Head']


@MODELS.register_module()
class DeepLabV2Head(BaseDecodeHead):
    """ASPP-v2: the sum of parallel dilated 3x3 classifiers.

    The branches are the classifier, so ``conv_seg`` is deleted (an unused
    layer breaks DDP) and ``channels`` is not an argument.

    Args:
        in_channels (int | Sequence[int]): Input channels; a sequence only
            with ``input_transform='resize_concat'``.
        num_classes (int): Number of classes, background included.
        dilations (Sequence[int]): Dilation of each branch.
        dropout_ratio (float): Dropout on the input features. Defaults to 0.
        init_cfg (dict | list[dict], optional): Initialisation config.
        **kwargs: Other :class:`BaseDecodeHead` arguments but ``channels``.
    """

    def __init__(self,
                 in_channels: Union[int, Sequence[int]] = 2048,
                 *,
                 num_classes: int,
                 dilations: Sequence[int] = (6, 12, 18, 24),
                 dropout_ratio: float = 0.,
                 init_cfg: Optional[Union[dict, List[dict]]] = dict(
                     type='Normal', std=0.01, bias=0., layer='Conv2d'),
                 **kwargs) -> None:
        if 'channels' in kwargs:
            raise ValueError(
                'DeepLabV2Head has no hidden layer, so `channels` is not an argument '
                '(it always equals the input channels); remove it from the head config.')
        if kwargs.get('input_transform') == 'multiple_select':
            raise ValueError(
                "DeepLabV2Head classifies one feature map; use input_transform=None or "
                "'resize_concat', not 'multiple_select'.")
        dilations = tuple(int(d) for d in dilations)
        if not dilations or min(dilations) < 1:
            raise ValueError(f'dilations must be a non-empty sequence of positive ints, '
                             f'got {dilations!r}.')
        channels = (sum(in_channels) if isinstance(in_channels, (list, tuple))
                    else in_channels)
        super().__init__(
            in_channels,
            channels,
            num_classes=num_classes,
            dropout_ratio=dropout_ratio,
            init_cfg=init_cfg,
            **kwargs)
        del self.conv_seg  # the dilated branches below are the classifier
        self.dilations = dilations
        self.aspp = nn.ModuleList(
            nn.Conv2d(self.channels, self.out_channels, kernel_size=3, padding=d, dilation=d)
            for d in dilations)

    def cls_seg(self, feat: Tensor) -> Tensor:
        """Classify each pixel: the sum of the dilated branches."""
        if self.dropout is not None:
            feat = self.dropout(feat)
        logits = self.aspp[0](feat)
        for branch in self.aspp[1:]:
            logits = logits + branch(feat)
        return logits

    def forward(self, inputs: Union[List[Tensor], Tuple[Tensor, ...]]) -> Tensor:
        """Return (N, num_classes, h, w) logits of the backbone outputs."""
        return self.cls_seg(self._transform_inputs(inputs))
