"""Multi-scale-input (MSC) encoder-decoder of DeepLab-v2."""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import OptSampleList, SampleList, add_prefix
from torch import Tensor

__all__ = ['MultiScaleEncoderDecoder']


@MODELS.register_module()
class MultiScaleEncoderDecoder(EncoderDecoder):
    """Encoder-decoder over multi-scale inputs with max fusion (DeepLab MSC).

    ``loss`` sums one decode loss per scale and one on the fused logits; an
    auxiliary head sees the 1.0-scale features only.

    Args:
        scales (Sequence[float]): Input scales, including 1.0.
        **kwargs: :class:`EncoderDecoder` arguments.

    Raises:
        ValueError: If ``scales`` lacks 1.0, has repeats or a scale <= 0.
    """

    def __init__(self, *args, scales: Sequence[float] = (1.0, 0.5, 0.75), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        scales = tuple(float(s) for s in scales)
        if 1.0 not in scales or len(set(scales)) != len(scales) or min(scales) <= 0:
            raise ValueError(
                f'scales must be distinct positive factors that include 1.0 (the size the '
                f'logits are fused at), got {scales!r}.')
        self.scales = scales
        self._ref_index = scales.index(1.0)

    def _scale_features(self, inputs: Tensor) -> List[Tuple[Tensor, ...]]:
        """Backbone (and neck) features of ``inputs`` at every scale."""
        feats = []
        for scale in self.scales:
            x = inputs if scale == 1.0 else F.interpolate(
                inputs, scale_factor=scale, mode='bilinear', align_corners=self.align_corners)
            feats.append(self.extract_feat(x))
        return feats

    def fuse_logits(self, scale_logits: Sequence[Tensor]) -> Tensor:
        """Pixel-wise max of every scale's logits at the 1.0-scale size.

        Args:
            scale_logits (Sequence[Tensor]): (N, C, h_s, w_s), in ``scales`` order.

        Returns:
            Tensor: (N, C, h, w) fused logits.
        """
        size = scale_logits[self._ref_index].shape[2:]
        aligned = [
            logits if logits.shape[2:] == size else F.interpolate(
                logits, size=size, mode='bilinear', align_corners=self.align_corners)
            for logits in scale_logits
        ]
        return torch.stack(aligned).amax(dim=0)

    def multi_scale_logits(self, inputs: Tensor) -> List[Tensor]:
        """Decode-head logits of every scale, then the fused logits.

        Args:
            inputs (Tensor): (N, 3, H, W) normalised images.

        Returns:
            list[Tensor]: One map per scale, then the fused map.
        """
        return self._decode(self._scale_features(inputs))

    def _decode(self, scale_feats: List[Tuple[Tensor, ...]]) -> List[Tensor]:
        """Head logits of every scale's features, then their max fusion."""
        scale_logits = [self.decode_head(f) for f in scale_feats]
        return scale_logits + [self.fuse_logits(scale_logits)]

    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        """Fused logits resized to the input size (used by whole/slide inference)."""
        fused = self.multi_scale_logits(inputs)[-1]
        return self.decode_head.predict_by_feat(fused, batch_img_metas)

    def _forward(self, inputs: Tensor, data_samples: OptSampleList = None) -> Tensor:
        """Fused logits at feature resolution, without post-processing."""
        return self.multi_scale_logits(inputs)[-1]

    @staticmethod
    def _labels_resized_to(seg_label: Tensor, size: torch.Size) -> SampleList:
        """Data samples whose ``gt_sem_seg`` is ``seg_label`` nearest-resized."""
        labels = F.interpolate(seg_label.float(), size=size, mode='nearest-exact').long()
        return [SegDataSample(gt_sem_seg=PixelData(data=label)) for label in labels]

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        """Sum of the decode losses of every scale and of the fused logits.

        Args:
            inputs (Tensor): (N, 3, H, W) normalised, equally padded images.
            data_samples (list[SegDataSample]): With ``gt_sem_seg`` (H, W).

        Returns:
            dict[str, Tensor]: Losses and accuracies, prefixed per output.
        """
        feats = self._scale_features(inputs)
        outputs = self._decode(feats)
        names = [f'decode_s{scale:g}' for scale in self.scales] + ['decode_max']
        seg_label = self.decode_head._stack_batch_gt(data_samples)
        losses = dict()
        for name, logits in zip(names, outputs):
            resized = self._labels_resized_to(seg_label, logits.shape[2:])
            losses.update(add_prefix(self.decode_head.loss_by_feat(logits, resized), name))
        if self.with_auxiliary_head:
            losses.update(
                self._auxiliary_head_forward_train(feats[self._ref_index], data_samples))
        return losses
