"""TagCLIP tags + CLIP-ES CAMs as a training-free mmseg segmentor.

The open-vocabulary segmentation protocol of MaskCLIP, SCLIP, NACLIP,
ProxyCLIP and their successors evaluates a segmentor through mmseg's own
datasets, ``IoUMetric`` and ``tools/test.py``. :class:`TagCLIPSegmentor` puts
the paper's CLS-SEG pipeline (tag the image with TagCLIP, then draw a CLIP-ES
CAM for each tag) behind that interface::

    predict(inputs, data_samples)
      for each image:
        image_tags()          TagCLIP.tag on the whole image (once per image)
        whole_cams() |        CLIPESPseudoLabeler.compute_cams + upsample
        slide_cams()          (test_cfg.mode; windows batched, tags shared)
        postprocess()         resize to ori_shape -> labeler.cams_to_label
                              -> pred_sem_seg; seg_logits = background +
                              per-class CAMs (zeros for untagged classes)

The tagger and the labeler share one CLIP module (built once here) and run in
the same ``predict`` call. No maths is re-implemented: tags, CAMs, their
upsampling and the CAM-to-label rule (background channel, CRF, label map) are
the two models' public methods.

Background (docs/open_vocab.md):

* datasets with a background class (VOC21, Context60, COCO-Object;
  ``with_background=True``): channel 0 is CLIP-ES's ``1 - max`` over the
  tagged CAMs, so a pixel is background when no tagged class is confident;
* ``reduce_zero_label`` datasets and Cityscapes (``with_background=False``):
  no background channel, the label is the argmax over the tag maps. In both
  cases background words only compete in the softmax whose gradient gives a
  CAM; they never become a prediction.
"""
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
from ...utils.quirks import Quirks, QuirksLike, resolve_legacy_quirks
from ...utils.thresholds import relative_threshold_mask
from ...utils.token_grid import patch_grid
from ..clip import build_clip
from ..clip.frozen_model import full_precision
from ..clip.presets import resolve_background, resolve_classes
from ..clip.prompts import text_key
from ..pseudo_labelers.crf import collect_pending_labels, set_label

__all__ = ['TagCLIPSegmentor', 'slide_windows']

#: Defaults of ``test_cfg``; see :class:`TagCLIPSegmentor`.
DEFAULT_TEST_CFG = dict(mode='whole', crop_size=224, stride=112, cam_batch_pairs=64,
                        tag_max_tokens=None)

#: Vocabulary the labeler is built with when neither the config nor the
#: dataset has given one yet (CLIPESPseudoLabeler requires a vocabulary at
#: construction; text embeddings are computed lazily, so it costs nothing).
_PLACEHOLDER = ('object', )


def slide_windows(height: int, width: int, crop: Tuple[int, int],
                  stride: Tuple[int, int]) -> List[Tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` of mmseg's slide inference.

    The same grid as ``EncoderDecoder.slide_inference``: the last window of a
    row or column is shifted back to end at the border, so every window has
    the size ``min(crop, image)``.
    """
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
    """Background words that are not also a name (or synonym) of a class.

    Shared benchmark presets (the VOC background words on Pascal Context or
    Cityscapes, whose classes include 'sky', 'road', 'building'...) and the
    peers' name files (SCLIP's COCO-Object file has 'bed' as background word
    and as class) would otherwise put the same word on both sides of the
    softmax.
    """
    keys = {text_key(s) for n in names for s in ([n] if isinstance(n, str) else n)}
    return tuple(w for w in words if text_key(w) not in keys)


@MODELS.register_module()
class TagCLIPSegmentor(BaseSegmentor):
    """Training-free segmentor: TagCLIP tags, then CLIP-ES CAMs per tag.

    Args:
        clip (dict | nn.Module): The CLIP shared by the tagger and the
            labeler (``dict(checkpoint=..., dtype=...)`` or a module).
        labeler (dict): :class:`CLIPESPseudoLabeler` arguments without
            ``clip``, ``quirks``, ``text_cache_dir``, ``autocast``, ``synonyms`` and
            ``with_background`` (set here). ``class_names`` may be left out
            when the dataset's classes should be used (``VocabularyHook``).
        tagger (dict, optional): :class:`TagCLIP` arguments, same exclusions.
            Its ``class_names`` default to the labeler's *uncorrected*
            vocabulary (given here or by the dataset); they must have the same
            length and order.
        with_background (bool): The dataset has a background class 0 (VOC21,
            Context60, COCO-Object): output channel 0 is ``1 - max`` of the
            tagged CAMs. False for ``reduce_zero_label`` datasets and
            Cityscapes: labels are the argmax over the tag maps.
        all_classes_as_tags (bool): Skip TagCLIP and draw a CAM for every
            class (Grad-CAM batched over classes), to measure what the tags
            buy. Off by default (the paper's pipeline).
        tag_ratio (float, optional): Per-benchmark relative tag threshold in
            [0, 1], replacing the tagger's ``tag_ratio`` on its final scores.
            None (default) keeps the tagger's (the paper's 0.5).
        crf (dict, optional): Dense-CRF options (``DenseCRF``) applied to the
            final label; the pipeline must keep ``ori_img``. Off by default.
        quirks (str | dict | Quirks): ``'reference'`` (default),
            ``'fixed'``, a dict of fields or a ``Quirks``, resolved once here
            for both models and the CRF (docs/modes.md).
        mode (str, optional): Deprecated spelling of ``quirks``
            (``'faithful'``/``'clean'``).
        text_cache_dir (str, optional): Text-embedding cache of both models.
        autocast (str, optional): ``'bf16'``/``'fp16'`` mixed precision of
            the ViT calls (see
            :class:`~tagclip_mmseg.models.clip.frozen_model.FrozenCLIPModel`).
        synonyms (str): How classes with synonyms are scored by both models:
            ``'joined'`` (TagCLIP's) or ``'max'`` (the peers': one softmax over
            every name, each class the max of its names'; the open-vocabulary
            configs use it). See docs/open_vocab.md, "Synonyms".
        data_preprocessor (dict, optional): Defaults to
            ``CLIPDataPreprocessor(bgr_to_rgb=True)`` (mmseg's
            ``LoadImageFromFile`` yields BGR); images are not padded.
        test_cfg (dict, optional): ``mode`` ('whole' or 'slide'),
            ``crop_size`` and ``stride`` of the windows (224 and 112 in the
            protocol), ``cam_batch_pairs`` (windows x tags per Grad-CAM call:
            bounds memory) and ``tag_max_tokens`` (token budget of the tagging
            pass; None: the whole input image).
        train_cfg (dict, optional): Unused: there is nothing to train.
        init_cfg (dict, optional): Unused.
    """

    def __init__(self,
                 clip: Union[dict, nn.Module],
                 labeler: dict,
                 tagger: Optional[dict] = None,
                 with_background: bool = True,
                 all_classes_as_tags: bool = False,
                 tag_ratio: Optional[float] = None,
                 crf: Optional[dict] = None,
                 quirks: QuirksLike = 'reference',
                 mode: Optional[str] = None,
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
        #: The resolved quirk switches, shared by both models and the CRF.
        self.quirks: Quirks = resolve_legacy_quirks(quirks, type(self).__name__, 'mode', mode)
        shared = dict(clip=build_clip(clip), quirks=self.quirks, text_cache_dir=text_cache_dir,
                      autocast=autocast, synonyms=synonyms)
        labeler, tagger = dict(labeler), dict(tagger or {})
        for name, cfg in (('labeler', labeler), ('tagger', tagger)):
            clash = sorted(set(cfg) & {*shared, 'mode', 'with_background', 'crf'})
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
            dict(type='CLIPESPseudoLabeler', class_names=_PLACEHOLDER, background_words=(),
                 with_background=with_background, crf=crf, **labeler, **shared))
        self.tagger = None
        if not all_classes_as_tags:
            self.tagger = MODELS.build(dict(type='TagCLIP', **tagger, **shared))
        self._has_vocabulary = False
        if names is not None:
            self.set_foreground(names, tag_names)

    @staticmethod
    def _check_test_cfg(test_cfg: Optional[dict]) -> Dict:
        cfg = {**DEFAULT_TEST_CFG, **dict(test_cfg or {})}
        if cfg['mode'] not in ('whole', 'slide'):
            raise ValueError(f"test_cfg.mode must be 'whole' or 'slide', got {cfg['mode']!r}")
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

    # ------------------------------------------------------------ vocabulary
    @property
    def class_names(self) -> Optional[Tuple[ClassName, ...]]:
        """Foreground vocabulary of the CAM stage (None before one is set)."""
        return self.labeler.class_names if self._has_vocabulary else None

    @property
    def num_classes(self) -> int:
        """Output channels: the foreground classes (+1 with background)."""
        return self.labeler.num_classes + int(self.with_background)

    def set_foreground(self, class_names: Union[str, Sequence[ClassName]],
                       tag_class_names: Union[None, str, Sequence[ClassName]] = None) -> None:
        """Set the foreground vocabulary of both models.

        Args:
            class_names: CAM-stage names (a preset such as ``'voc-cam'`` or a
                list); output channel ``c (+1)`` is class ``c``.
            tag_class_names: Tagger names in the same order (e.g. ``'voc'``
                without CLIP-ES's renames); defaults to ``class_names``.

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
        self._has_vocabulary = True

    def set_vocabulary(self, classes: Sequence[ClassName],
                       background_words: Union[None, str, Sequence[str]] = None) -> None:
        """Use a dataset's classes (``VocabularyHook``).

        With ``with_background`` the dataset's class 0 must be its background
        class (mmseg's VOC and Pascal Context datasets, ``COCOObjectDataset``)
        and is dropped from the vocabulary.

        Raises:
            ValueError: If ``with_background`` is set but class 0 is not
                'background' (a ``reduce_zero_label`` dataset needs
                ``with_background=False``).
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

    # ------------------------------------------------------------ inference
    def _check_ready(self) -> None:
        if not self._has_vocabulary:
            raise RuntimeError('TagCLIPSegmentor has no vocabulary: set labeler.class_names in '
                               'the config, or add VocabularyHook to read the dataset classes')

    def _to_patch_grid(self, images: Tensor, max_tokens: Optional[int] = None) -> Tensor:
        """Resize (B, 3, h, w) images to the token grid of ``patch_grid``."""
        p = self.clip.visual.patch_size
        gh, gw = patch_grid(images.shape[-2], images.shape[-1], p, max_tokens)
        if (gh * p, gw * p) == tuple(images.shape[-2:]):
            return images
        return F.interpolate(images, size=(gh * p, gw * p), mode='bilinear', align_corners=False)

    def image_tags(self, image: Tensor) -> List[int]:
        """Foreground tag indices of one normalised (3, H, W) image.

        TagCLIP runs once on the whole image (resized to its patch grid, at
        most ``test_cfg.tag_max_tokens`` tokens), whatever the CAM mode.
        """
        if self.all_classes_as_tags:
            return list(range(self.labeler.num_classes))
        out = self.tagger.tag(self._to_patch_grid(image[None], self.test_cfg['tag_max_tokens']))
        tags = out['tags'] if self.tag_ratio is None else relative_threshold_mask(
            out['p_final'], self.tag_ratio)
        return tags[0].nonzero().flatten().tolist()

    def window_cams(self, image: Tensor, boxes: Sequence[Tuple[int, int, int, int]],
                    tags: List[int]) -> Iterator[Tuple[int, Tensor]]:
        """CAMs of ``tags`` in equal-size windows of one image, chunk by chunk.

        Grad-CAM is batched over windows and tags, ``cam_batch_pairs`` pairs
        per call (at least one window); windows are cropped per chunk and
        each chunk is yielded before the next is computed, so memory does not
        grow with the number of windows.

        Args:
            image (Tensor): (3, H, W) normalised image.
            boxes (Sequence[tuple]): ``(y1, y2, x1, x2)`` windows, all of one
                size ``(h, w)``.
            tags (list[int]): Foreground classes to draw (K).

        Yields:
            tuple: Index of the chunk's first window and its (b, K, h, w)
            CAMs at window resolution.
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
        """Tags and their (K, H, W) CAMs at the input size (test_cfg mode).

        Resizing and window averaging run in fp32; the tagger and the labeler
        apply the ``autocast`` option to their ViT calls themselves.
        """
        image = image.to(self.clip.dtype)
        with full_precision(image.device):
            tags = self.image_tags(image)
            if not tags:
                return tags, image.new_zeros(0, *image.shape[-2:], dtype=torch.float32)
            infer = self.slide_cams if self.test_cfg['mode'] == 'slide' else self.whole_cams
            return tags, infer(image, tags).float()

    def postprocess(self, cams: Tensor, tags: List[int], sample: SegDataSample,
                    wait: bool = True) -> SegDataSample:
        """Fill ``pred_sem_seg`` and ``seg_logits`` at the original size.

        The CAMs are resized (bilinear) from the input to ``ori_shape``; the
        label is :meth:`CLIPESPseudoLabeler.cams_to_label` (background
        channel, optional CRF); ``seg_logits`` scatters the CAMs into a
        ``num_classes`` map with zeros for untagged classes. With
        ``wait=False`` a CRF with workers leaves the mask pending until
        ``collect_pending_labels`` (what :meth:`predict` does).
        """
        size = tuple(sample.metainfo.get('ori_shape', cams.shape[-2:])[:2])
        if tuple(cams.shape[-2:]) != size:
            cams = F.interpolate(cams[None], size=size, mode='bilinear',
                                 align_corners=self.align_corners)[0] if cams.shape[0] else \
                cams.new_zeros(0, *size)
        label = self.labeler.cams_to_label(cams, tags, sample, wait=wait)
        logits = cams.new_zeros(self.num_classes, *size)
        offset = int(self.with_background)
        if tags:
            logits[torch.as_tensor(tags, device=cams.device) + offset] = cams
        if self.with_background:
            logits[0] = 1 - cams.amax(dim=0) if cams.shape[0] else 1
        sample.set_data(dict(seg_logits=PixelData(data=logits)))
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
            list[SegDataSample]: With ``pred_sem_seg`` (1, H, W) and
            ``seg_logits`` (num_classes, H, W) at the original size.
        """
        self._check_ready()
        if isinstance(inputs, Tensor):
            inputs = list(inputs) if inputs.dim() == 4 else [inputs]
        if data_samples is None:
            data_samples = [SegDataSample(metainfo=dict(ori_shape=tuple(x.shape[-2:])))
                            for x in inputs]
        for image, sample in zip(inputs, data_samples):
            tags, cams = self.image_cams(image)
            self.postprocess(cams, tags, sample, wait=False)
        # A CRF with workers ran each image's CRF in its pool while the next
        # images' CAMs were computed; every returned mask is final.
        collect_pending_labels(data_samples)
        return data_samples

    # ---------------------------------------------- BaseSegmentor contract
    def forward(self, inputs, data_samples: OptSampleList = None, mode: str = 'predict'):
        """``'predict'`` and ``'tensor'``; there is nothing to train."""
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self._forward(inputs, data_samples)
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        raise ValueError(f'unknown mode {mode!r}; expected "predict" or "tensor"')

    def _forward(self, inputs, data_samples: OptSampleList = None) -> List[Tensor]:
        """(num_classes, H, W) logits at the input size, one per image."""
        self._check_ready()
        if isinstance(inputs, Tensor):
            inputs = list(inputs) if inputs.dim() == 4 else [inputs]
        out = []
        for image in inputs:
            tags, cams = self.image_cams(image)
            sample = SegDataSample(metainfo=dict(ori_shape=tuple(image.shape[-2:])))
            out.append(self.postprocess(cams, tags, sample).seg_logits.data)
        return out

    def extract_feat(self, inputs: Tensor) -> List[Tensor]:
        raise NotImplementedError('TagCLIPSegmentor has no feature pyramid; use predict')

    def encode_decode(self, inputs: Tensor, batch_data_samples: SampleList) -> Tensor:
        """Input-size logits of a batch of equal-size images."""
        return torch.stack(self._forward(inputs))

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        raise RuntimeError('TagCLIPSegmentor is training-free: run it with tools/test.py '
                           '(no checkpoint), not tools/train.py.')

    def train(self, mode: bool = True) -> 'TagCLIPSegmentor':
        """Keep the frozen models in eval mode."""
        super().train(mode)
        self.labeler.train(False)
        if self.tagger is not None:
            self.tagger.train(False)
        return self

    def train_step(self, data, optim_wrapper):
        return self.loss(None, None)
