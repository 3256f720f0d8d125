"""TagCLIP tags + CLIP-ES CAMs as a training-free mmseg segmentor."""
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.segmentors import BaseSegmentor
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from mmseg.utils import OptSampleList, SampleList
from torch import Tensor, nn

from ...utils.checks import check_range
from ...utils.class_names import ClassName
from ...utils.quirks import Quirks, QuirksLike, resolve_quirks
from ...utils.thresholds import relative_threshold_mask
from ...utils.token_grid import patch_grid
from ..clip import build_clip
from ..clip.frozen_model import FrozenModel, full_precision
from ..clip.presets import resolve_background, resolve_classes
from ..clip.prompts import text_key
from ..pseudo_labelers.crf import collect_pending_labels, set_label

__all__ = ['TagCLIPSegmentor', 'slide_windows']

DEFAULT_TEST_CFG = dict(inference='whole', crop_size=224, stride=112, cam_batch_pairs=64,
                        tag_max_tokens=None)


def slide_windows(height: int, width: int, crop: Tuple[int, int],
                  stride: Tuple[int, int]) -> List[Tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` of mmseg's ``slide_inference`` grid."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, height)
            x2 = min(w_idx * w_stride + w_crop, width)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


def _pair(value: Union[int, Sequence[int]], name: str) -> Tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f'test_cfg.{name} must be a positive int or (h, w), got {value!r}')
    return pair


def _without(words: Sequence[str], names: Sequence[ClassName]) -> Tuple[str, ...]:
    """Background words that are not also a name or synonym of a class."""
    keys = {text_key(s) for n in names for s in ([n] if isinstance(n, str) else n)}
    return tuple(w for w in words if text_key(w) not in keys)


@MODELS.register_module()
class TagCLIPSegmentor(FrozenModel, BaseSegmentor):
    """Training-free segmentor: TagCLIP tags, then CLIP-ES CAMs per tag.

    Args:
        clip (dict | nn.Module): The CLIP shared by the tagger and the labeler.
        labeler (dict): :class:`CLIPESPseudoLabeler` arguments but the shared
            ones set here; no ``class_names``: the dataset's.
        tagger (dict, optional): :class:`TagCLIP` arguments, same exclusions.
        with_background (bool): Channel 0 is background (``1 - max`` of CAMs).
        all_classes_as_tags (bool): Skip TagCLIP: a CAM for every class.
        tag_ratio (float, optional): Relative tag threshold; None: the tagger's.
        crf (dict, optional): ``DenseCRF`` options; needs ``ori_img``.
        quirks (str | dict | Quirks): For both models and the CRF.
        text_cache_dir (str, optional): Text-embedding cache of both models.
        autocast (str, optional): ``'bf16'``/``'fp16'`` ViT precision.
        synonyms (str): ``'joined'`` or ``'max'``, for both models.
        data_preprocessor (dict, optional): Defaults to a
            ``CLIPDataPreprocessor``.
        test_cfg (dict, optional): Overrides of ``DEFAULT_TEST_CFG`` (inference, windows).
        train_cfg (dict, optional): Unused: there is nothing to train.
        init_cfg (dict, optional): Unused.
    """

    sample_type = SegDataSample

    def __init__(self,
                 clip: Union[dict, nn.Module],
                 labeler: dict,
                 tagger: Optional[dict] = None,
                 with_background: bool = True,
                 all_classes_as_tags: bool = False,
                 tag_ratio: Optional[float] = None,
                 crf: Optional[dict] = None,
                 quirks: QuirksLike = 'reference',
                 text_cache_dir: Optional[str] = None,
                 autocast: Optional[str] = None,
                 synonyms: str = 'joined',
                 data_preprocessor: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if data_preprocessor is None or isinstance(data_preprocessor, dict):
            data_preprocessor = MODELS.build(
                data_preprocessor or dict(type='CLIPDataPreprocessor', bgr_to_rgb=True))
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        check_range('tag_ratio', tag_ratio, 0, 1, allow_none=True)
        self.with_background = with_background
        self.all_classes_as_tags = all_classes_as_tags
        self.tag_ratio = tag_ratio
        self.align_corners = False
        self.test_cfg = self._check_test_cfg(test_cfg)
        self.quirks: Quirks = resolve_quirks(quirks)
        shared = dict(clip=build_clip(clip), quirks=self.quirks, text_cache_dir=text_cache_dir,
                      autocast=autocast, synonyms=synonyms)
        labeler, tagger = dict(labeler), dict(tagger or {})
        for name, cfg in (('labeler', labeler), ('tagger', tagger)):
            clash = sorted(set(cfg) & {*shared, 'with_background', 'crf'})
            if clash:
                raise ValueError(f'set {clash} on TagCLIPSegmentor itself, not in its {name} '
                                 'config: both models must agree on them')
        names = labeler.pop('class_names', None)
        tag_names = tagger.pop('class_names', None)
        if names is None and tag_names is not None:
            raise ValueError('tagger.class_names needs labeler.class_names (the CAM '
                             'vocabulary, same classes in the same order)')
        self._label_bg = resolve_background(labeler.pop('background_words', ()))
        self._tag_bg = resolve_background(tagger.pop('background_words', ()))
        self.labeler = MODELS.build(
            dict(type='CLIPESPseudoLabeler', background_words=(),
                 with_background=with_background, crf=crf, **labeler, **shared))
        self.tagger = None
        if not all_classes_as_tags:
            self.tagger = MODELS.build(dict(type='TagCLIP', **tagger, **shared))
        if names is not None:
            self.set_foreground(names, tag_names)

    @staticmethod
    def _check_test_cfg(test_cfg: Optional[dict]) -> Dict:
        unknown = sorted(set(test_cfg or {}) - set(DEFAULT_TEST_CFG))
        if unknown:
            renamed = " ('mode' is now 'inference')" if 'mode' in unknown else ''
            raise ValueError(f'unknown test_cfg keys {unknown}{renamed}; valid keys are '
                             f'{sorted(DEFAULT_TEST_CFG)}')
        cfg = {**DEFAULT_TEST_CFG, **dict(test_cfg or {})}
        if cfg['inference'] not in ('whole', 'slide'):
            raise ValueError("test_cfg.inference must be 'whole' or 'slide', got "
                             f"{cfg['inference']!r}")
        cfg['crop_size'] = _pair(cfg['crop_size'], 'crop_size')
        cfg['stride'] = _pair(cfg['stride'], 'stride')
        check_range('test_cfg.cam_batch_pairs', cfg['cam_batch_pairs'], 1, integer=True)
        check_range('test_cfg.tag_max_tokens', cfg['tag_max_tokens'], 1, integer=True,
                    allow_none=True)
        return cfg

    @property
    def clip(self) -> nn.Module:
        """The CLIP shared by both models."""
        return self.labeler.clip

    @property
    def class_names(self) -> Optional[Tuple[ClassName, ...]]:
        """Foreground vocabulary of the CAM stage (None before one is set)."""
        return self.labeler.class_names

    @property
    def num_classes(self) -> int:
        """Output channels: the foreground classes (+1 with background)."""
        return self.labeler.num_classes + int(self.with_background)

    def set_foreground(self, class_names: Union[str, Sequence[ClassName]],
                       tag_class_names: Union[None, str, Sequence[ClassName]] = None) -> None:
        """Set the foreground vocabulary of both models.

        Args:
            class_names: CAM-stage names, a preset (``'voc-cam'``) or a list.
            tag_class_names: Tagger names in the same order; default
                ``class_names``.

        Raises:
            ValueError: When the two vocabularies differ in length.
        """
        names = resolve_classes(class_names)
        tag_names = names if tag_class_names is None else resolve_classes(tag_class_names)
        if len(tag_names) != len(names):
            raise ValueError(f'the tagger vocabulary has {len(tag_names)} classes but the CAM '
                             f'vocabulary has {len(names)}; they must share class indices')
        self.labeler.set_vocabulary(names, _without(self._label_bg, names))
        if self.tagger is not None:
            self.tagger.set_vocabulary(tag_names, _without(self._tag_bg, tag_names))

    def set_vocabulary(self, classes: Sequence[ClassName],
                       background_words: Union[None, str, Sequence[str]] = None) -> None:
        """Use a dataset's classes, less class 0 with ``with_background``.

        Args:
            classes (Sequence): The dataset's classes.
            background_words (str | Sequence[str], optional): Replace both
                models' background words.

        Raises:
            ValueError: If class 0 is not 'background' as expected.
        """
        classes = tuple(classes)
        if self.with_background:
            first = classes[0] if classes else None
            if first != 'background':
                raise ValueError(f"with_background=True needs the dataset's class 0 to be "
                                 f"'background', got {first!r}; use with_background=False for "
                                 'reduce_zero_label datasets and Cityscapes')
            classes = classes[1:]
        if background_words is not None:
            self._label_bg = self._tag_bg = resolve_background(background_words)
        self.set_foreground(classes)

    def _to_patch_grid(self, images: Tensor, max_tokens: Optional[int] = None) -> Tensor:
        """Resize (B, 3, h, w) images to the token grid of ``patch_grid``."""
        p = self.clip.visual.patch_size
        gh, gw = patch_grid(images.shape[-2], images.shape[-1], p, max_tokens)
        if (gh * p, gw * p) == tuple(images.shape[-2:]):
            return images
        return F.interpolate(images, size=(gh * p, gw * p), mode='bilinear', align_corners=False)

    def image_tags(self, image: Tensor) -> List[int]:
        """Foreground tag indices of one normalised (3, H, W) image."""
        if self.all_classes_as_tags:
            return list(range(self.labeler.num_classes))
        out = self.tagger.tag(self._to_patch_grid(image[None], self.test_cfg['tag_max_tokens']))
        tags = out.tags if self.tag_ratio is None else relative_threshold_mask(
            out.p_final, self.tag_ratio)
        return tags[0].nonzero().flatten().tolist()

    def window_cams(self, image: Tensor, boxes: Sequence[Tuple[int, int, int, int]],
                    tags: List[int]) -> Iterator[Tuple[int, Tensor]]:
        """CAMs of ``tags`` in equal-size windows of one image, chunk by chunk.

        Args:
            image (Tensor): (3, H, W) normalised image.
            boxes (Sequence[tuple]): ``(y1, y2, x1, x2)`` windows of one size.
            tags (list[int]): Foreground classes to draw (K).

        Yields:
            tuple: The chunk's first window index and its (b, K, h, w) CAMs.
        """
        K = len(tags)
        step = max(1, self.test_cfg['cam_batch_pairs'] // max(K, 1))
        for i in range(0, len(boxes), step):
            crops = torch.stack([image[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes[i:i + step]])
            b, _, h, w = crops.shape
            cams, _ = self.labeler.compute_cams(self._to_patch_grid(crops), [tags] * b)
            hp, wp = cams.shape[-2:]
            up = self.labeler.upsample(cams.reshape(b * K, hp, wp), (h, w))
            yield i, up.view(b, K, h, w)

    def whole_cams(self, image: Tensor, tags: List[int]) -> Tensor:
        """(K, H, W) CAMs of the whole (3, H, W) image."""
        _, H, W = image.shape
        _, cams = next(self.window_cams(image, [(0, H, 0, W)], tags))
        return cams[0]

    def slide_cams(self, image: Tensor, tags: List[int]) -> Tensor:
        """(K, H, W) CAMs averaged over overlapping windows (mmseg's grid)."""
        _, H, W = image.shape
        boxes = slide_windows(H, W, self.test_cfg['crop_size'], self.test_cfg['stride'])
        total = image.new_zeros(len(tags), H, W, dtype=torch.float32)
        count = image.new_zeros(1, H, W, dtype=torch.float32)
        for start, cams in self.window_cams(image, boxes, tags):
            for (y1, y2, x1, x2), cam in zip(boxes[start:start + cams.shape[0]], cams):
                total[:, y1:y2, x1:x2] += cam
                count[:, y1:y2, x1:x2] += 1
        return total / count

    def image_cams(self, image: Tensor) -> Tuple[List[int], Tensor]:
        """Tags and their (K, H, W) fp32 CAMs at the input size."""
        image = self.clip_input(image)
        with full_precision(image.device):
            tags = self.image_tags(image)
            if not tags:
                return tags, image.new_zeros(0, *image.shape[-2:], dtype=torch.float32)
            infer = self.slide_cams if self.test_cfg['inference'] == 'slide' else self.whole_cams
            return tags, infer(image, tags).float()

    def postprocess(self, cams: Tensor, tags: List[int], sample: SegDataSample,
                    wait: bool = True) -> SegDataSample:
        """Fill ``pred_sem_seg`` and ``seg_logits`` at ``ori_shape``.

        Args:
            cams (Tensor): (K, H, W) CAMs of ``tags`` at the input size.
            tags (list[int]): Foreground tag indices.
            sample (SegDataSample): Filled in place.
            wait (bool): False leaves a CRF worker's mask pending until
                ``collect_pending_labels``.

        Returns:
            SegDataSample: ``sample``.
        """
        size = tuple(sample.metainfo.get('ori_shape', cams.shape[-2:])[:2])
        if tuple(cams.shape[-2:]) != size:
            cams = F.interpolate(cams[None], size=size, mode='bilinear',
                                 align_corners=self.align_corners)[0] if cams.shape[0] else \
                cams.new_zeros(0, *size)
        label = self.labeler.cams_to_label(cams, tags, sample, wait=wait)
        sample.set_data(dict(seg_logits=PixelData(data=self.labeler.seg_logits(cams, tags))))
        set_label(sample, label)  # a CRF in workers: see predict
        sample.set_metainfo(dict(tags=list(tags)))
        return sample

    def predict(self, inputs: Union[Tensor, List[Tensor]],
                data_samples: OptSampleList = None) -> SampleList:
        """Tags, CAMs and masks for each image (images may differ in size).

        Args:
            inputs (Tensor | list[Tensor]): Normalised (3, H, W) images.
            data_samples (list[SegDataSample], optional): With ``ori_shape``.

        Returns:
            list[SegDataSample]: With ``pred_sem_seg`` and ``seg_logits``.
        """
        self.labeler.call_vocabulary()
        inputs, data_samples = self.image_list(inputs, data_samples)
        for image, sample in zip(inputs, data_samples):
            tags, cams = self.image_cams(image)
            self.postprocess(cams, tags, sample, wait=False)
        collect_pending_labels(data_samples)
        return data_samples

    def _forward(self, inputs: Union[Tensor, List[Tensor]],
                 data_samples: OptSampleList = None) -> Tensor:
        """(B, num_classes, H, W) logits at the input size: ``forward(mode='tensor')``."""
        self.labeler.call_vocabulary()
        inputs, _ = self.image_list(inputs, data_samples)
        out = []
        for image in inputs:
            tags, cams = self.image_cams(image)
            out.append(self.labeler.seg_logits(cams, tags))
        return self.stack_outputs(out)

    def extract_feat(self, inputs: Tensor) -> List[Tensor]:
        """Not available: there is no feature pyramid."""
        raise NotImplementedError('TagCLIPSegmentor has no feature pyramid; use predict')

    def encode_decode(self, inputs: Tensor, batch_data_samples: SampleList) -> Tensor:
        """Input-size logits of a batch of equal-size images."""
        return self._forward(inputs)
