"""CLIP-ES pseudo-labeler: image tags -> Grad-CAMs -> affinity-refined masks.

See docs/method.md, "CLIP-ES pseudo masks from tags".
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch import Tensor

from ...utils.checks import check_finite, check_range
from ...utils.class_names import ClassName
from ...utils.label_maps import LabelMap, label_lut
from ...utils.quirks import QuirksLike
from ..clip.frozen_model import FrozenCLIPModel, Vocabulary, full_precision
from ..clip.last_block_grad import LastBlockGrad
from ..clip.presets import resolve_background, resolve_templates
from ..ops import (AttentionVote, affinity_from_attention, bilinear_resize_matrices, caa_refine,
                   normalize_grad_cam)
from .crf import Label, PendingLabel, collect_pending_labels, set_label

__all__ = ['CLIPESPseudoLabeler', 'TagPairs', 'tag_pairs']


class TagPairs(NamedTuple):
    """The (image, tag) pairs of a batch, each a (P,) long tensor."""

    #: Image of each pair.
    img: Tensor
    #: Tag class of each pair.
    cls: Tensor
    #: Position of the tag in its image's list.
    slot: Tensor


def tag_pairs(tag_lists: List[List[int]], device: torch.device) -> TagPairs:
    """One pair per tag of every image, in list order."""
    flat = [(b, c, k) for b, t in enumerate(tag_lists) for k, c in enumerate(t)]
    img, cls, slot = (torch.tensor(col, dtype=torch.long, device=device)
                      for col in (zip(*flat) if flat else ((), (), ())))
    return TagPairs(img, cls, slot)


@MODELS.register_module()
class CLIPESPseudoLabeler(FrozenCLIPModel):
    """CLIP-ES CAMs and pseudo masks from image-level tags.

    Args:
        class_names (str | Sequence[str | Sequence[str]], optional): CAM
            vocabulary (a preset or a list); ``None`` until set.
        background_words (str | Sequence[str]): Softmax competitors.
        templates (str | Sequence[str]): CAM prompt templates or a preset.
        caa_layers (Sequence[int]): 0-based layers averaged for the affinity.
        caa_box_thr (float): Box threshold relative to each CAM's max.
        with_background (bool): Add the ``1 - max`` background channel.
        label_map (Sequence[int] | str, optional): Output index -> saved label.
        quirks (str | dict | Quirks): Reference quirks (docs/modes.md).
        tagger (dict, optional): A :class:`TagCLIP` used instead of the
            samples' ``tags``.
        return_cams (bool): Attach the (K, H, W) float16 CAMs to each sample.
        crf (dict, optional): :class:`DenseCRF` options.
        **kwargs: ``clip``, ``text_cache_dir``, ``autocast``,
            ``images_per_forward``, ``truncate_prompts``, ``synonyms``,
            ``data_preprocessor`` and ``init_cfg`` of ``FrozenCLIPModel``.
    """

    sample_type = SegDataSample

    def __init__(self,
                 class_names: Union[None, str, Sequence[ClassName]] = None,
                 background_words: Union[str, Sequence[str]] = (),
                 templates: Union[str, Sequence[str]] = 'clip-es',
                 caa_layers: Sequence[int] = tuple(range(4, 11)),
                 caa_box_thr: float = 0.4,
                 with_background: bool = True,
                 label_map: Optional[LabelMap] = None,
                 quirks: QuirksLike = 'reference',
                 tagger: Optional[dict] = None,
                 return_cams: bool = False,
                 crf: Optional[dict] = None,
                 **kwargs) -> None:
        super().__init__(quirks=quirks, **kwargs)
        self.templates = resolve_templates(templates)  # before the vocabulary: it checks prompts
        self.background_words = resolve_background(background_words)
        if class_names is not None:
            self.set_vocabulary(class_names, self.background_words)
        self.caa_layers = self.layer_indices('caa_layers', caa_layers)
        self.caa_box_thr = check_range('caa_box_thr', caa_box_thr, 0, 1)
        self.with_background = with_background
        self.register_buffer('label_map', None if label_map is None else label_lut(label_map),
                             persistent=False)
        self.return_cams = return_cams
        self.tagger = None
        if tagger is not None:
            tagger = dict(dict(quirks=self.quirks, synonyms=self.synonyms,
                               autocast=self.autocast_dtype), **tagger)
            self.tagger = MODELS.build(tagger)
        sizes = {self.num_classes, self.tagger.num_classes if self.tagger else 0} - {0}
        if len(sizes) > 1:
            raise ValueError(f'the tagger has {self.tagger.num_classes} classes but the labeler '
                             f'has {self.num_classes}; they must share class indices')
        self.crf = None
        if crf is not None:
            crf = dict(crf)
            crf.setdefault('quirks', self.quirks)
            self.crf = MODELS.build(dict(type='DenseCRF', **crf))

    def predict(self, inputs: List[Tensor], data_samples: list, **settings) -> list:
        """Masks (and CAMs) of every image; ``settings`` go to :meth:`predict_batch`."""
        super().predict(inputs, data_samples, **settings)
        collect_pending_labels(data_samples, device='cpu')
        return data_samples

    def predict_batch(self, images: Tensor, data_samples: list,
                      vocabulary: Optional[Vocabulary] = None,
                      return_cams: Optional[bool] = None) -> None:
        """Fill a batch's samples (see :meth:`predict`).

        Args:
            images (Tensor): (B, 3, H, W) normalised images of one size.
            data_samples (list): Their samples, with ``tags`` without a tagger.
            vocabulary (Vocabulary, optional): This call's vocabulary.
            return_cams (bool, optional): This call's ``return_cams``.
        """
        tag_lists = self.batch_tags(images, data_samples, vocabulary)
        cams, grid_hw = self.compute_cams(images, tag_lists, vocabulary)
        return_cams = self.return_cams if return_cams is None else return_cams
        for i, sample in enumerate(data_samples):
            self._fill(sample, cams[i][:len(tag_lists[i])], tag_lists[i], grid_hw, return_cams)

    def tensor_batch(self, images: Tensor, data_samples: list) -> Tensor:
        """(B, C, H, W) :meth:`seg_logits` at the input size."""
        tag_lists = self.batch_tags(images, data_samples)
        cams, _ = self.compute_cams(images, tag_lists)
        size = tuple(images.shape[-2:])
        return torch.stack([
            self.seg_logits(self.upsample(c[:len(t)], size), t) for c, t in zip(cams, tag_lists)
        ])

    def batch_tags(self, images: Tensor, data_samples: list,
                   vocabulary: Optional[Vocabulary] = None) -> List[List[int]]:
        """Tag indices per image: the in-pass tagger's, else the samples'."""
        if self.tagger is not None:
            if vocabulary is not None:
                raise ValueError('a per-call vocabulary needs a labeler without an in-pass '
                                 'tagger (give the tags in the samples)')
            tags = self.tagger.tag(images).tags.cpu()  # one host copy per batch
            return [t.nonzero().flatten().tolist() for t in tags]
        num_classes = len(self.call_vocabulary(vocabulary).class_names)
        return [self._sample_tags(s, num_classes) for s in data_samples]

    def _sample_tags(self, sample, num_classes: int) -> List[int]:
        tags = sample.metainfo.get('tags')
        if tags is None:
            raise KeyError(f"sample {sample.metainfo.get('img_path')} has no 'tags': set the "
                           "dataset's tag_source ('file' or 'gt') or give the labeler a tagger")
        tags = sorted({int(t) for t in tags})
        bad = [t for t in tags if not 0 <= t < num_classes]
        if bad:
            raise ValueError(f"tags {bad} of {sample.metainfo.get('img_path')} are outside the "
                             f'{num_classes}-class vocabulary')
        return tags

    def compute_cams(self, images: Tensor, tag_lists: List[List[int]],
                     vocabulary: Optional[Vocabulary] = None) -> Tuple[Tensor, tuple]:
        """Refined CAMs at patch resolution for every image and tag.

        Args:
            images (Tensor): (B, 3, H, W) normalised images of one size.
            tag_lists (list[list[int]]): Foreground tag indices per image.
            vocabulary (Vocabulary, optional): This call's vocabulary.

        Returns:
            tuple: (B, K_max, hp, wp) fp32 refined CAMs and the token grid.

        Raises:
            NonFiniteError: When a CAM holds NaN or inf.
        """
        with full_precision(images.device):
            return self._compute_cams(images, tag_lists, vocabulary)

    def _compute_cams(self, images: Tensor, tag_lists: List[List[int]],
                      vocabulary: Optional[Vocabulary]) -> Tuple[Tensor, tuple]:
        vit = self.clip.visual
        last = vit.num_layers - 1
        avg = AttentionVote(avg_layers=self.caa_layers, vote_min=None)
        with torch.no_grad(), self.autocast_context(images.device):  # maps come back in fp32
            out = vit.forward_until(images, last, attn_layers=self.caa_layers,
                                    attn_callback=avg.update,
                                    round_pos_embed_fp16=self.round_pos_embed_fp16)
        hp, wp = out.grid_hw
        B = images.shape[0]
        k_max = max((len(t) for t in tag_lists), default=0)
        if k_max == 0:
            return images.new_zeros(B, 0, hp, wp, dtype=torch.float32), out.grid_hw
        pair_img, pair_cls, pair_slot = pairs = tag_pairs(tag_lists, images.device)
        cams, last_attn = self._grad_cam(out.hidden, pairs, tag_lists, vocabulary)
        if last_attn is not None:
            avg.update(last, last_attn)
        affinity = affinity_from_attention(avg.finalize())
        padded = cams.new_zeros(B, k_max, hp * wp)
        valid = torch.zeros(B, k_max, dtype=torch.bool, device=cams.device)
        padded[pair_img, pair_slot] = cams
        valid[pair_img, pair_slot] = True
        refined = caa_refine(affinity, padded, out.grid_hw, self.caa_box_thr,
                             box_clamp=self.quirks.box_clamp, valid=valid)
        check_finite(refined, 'CLIP-ES CAMs (image, tag, patch)')
        return refined.view(B, k_max, hp, wp), out.grid_hw

    def grad_cam(self, hidden: Tensor, pair_img: Tensor, pair_cls: Tensor,
                 tag_lists: List[List[int]], vocabulary: Optional[Vocabulary] = None
                 ) -> Tuple[Tensor, Optional[Tensor]]:
        """Grad-CAM of every (image, tag) pair from one forward of the last block.

        See docs/performance.md, "Grad-CAM for many tags".

        Args:
            hidden (Tensor): (B, L, D) residual stream entering the last block.
            pair_img (Tensor): (P,) image of each pair.
            pair_cls (Tensor): (P,) tag class of each pair.
            tag_lists (list[list[int]]): Tags per image, in pair order.
            vocabulary (Vocabulary, optional): This call's vocabulary.

        Returns:
            tuple: (P, N) normalised CAMs and the last block's (B, L, L)
            attention (``None`` when it is not a CAA layer).
        """
        pairs = TagPairs(pair_img, pair_cls, tag_pairs(tag_lists, hidden.device).slot)
        with full_precision(hidden.device):  # also when called on its own under autocast
            return self._grad_cam(hidden, pairs, tag_lists, vocabulary)

    def _grad_cam(self, hidden: Tensor, pairs: TagPairs, tag_lists: List[List[int]],
                  vocabulary: Optional[Vocabulary]) -> Tuple[Tensor, Optional[Tensor]]:
        vit = self.clip.visual
        voc = self.call_vocabulary(vocabulary)
        names = voc.class_names + voc.background_words
        text = self.text_embeddings(names, self.templates)
        B, device = hidden.shape[0], hidden.device
        k_max = max(len(t) for t in tag_lists)
        pair_img, pair_cls, pair_slot = pairs
        # Softmax support of each image: its tags plus every background word.
        support = torch.zeros(B, len(names), dtype=torch.bool, device=device)
        support[pair_img, pair_cls] = True
        support[:, len(voc.class_names):] = True
        # Slot k of image b selects the probability of its k-th tag.
        select = torch.zeros(k_max, B, len(names), device=device)
        select[pair_slot, pair_img, pair_cls] = 1.
        need_last = (vit.num_layers - 1) in self.caa_layers
        with self.autocast_context(device):
            block = LastBlockGrad(vit, hidden)
            feats = block.pooled_embedding()
        with torch.enable_grad():
            f = feats.detach().float().requires_grad_(True)
            logits = 100. * F.normalize(f, dim=-1) @ text.t()
            probs = self.class_probs(logits, names, support)
            # d prob / d pooled embedding for every slot at once: (K, B, E).
            (cot, ) = torch.autograd.grad(probs, f, grad_outputs=select, is_grads_batched=True)
        with self.autocast_context(device):
            alpha, last_attn = block.token_mean_grad(cot.transpose(0, 1), need_last)  # (B, K, D)
        act = block.normed[:, 1:].float()  # (B, N, D)
        cam = F.relu(torch.einsum('bnd,bkd->bkn', act, alpha.float()))[pair_img, pair_slot]
        last_attn = None if last_attn is None else last_attn.float()
        return normalize_grad_cam(cam, self.quirks.grad_cam_double_norm), last_attn

    def _fill(self, sample, cams: Tensor, tags: List[int], grid_hw: tuple,
              return_cams: bool) -> None:
        if not isinstance(sample, SegDataSample):
            raise TypeError('CLIPESPseudoLabeler expects mmseg SegDataSample inputs (pack with '
                            f'PackSegInputs); got {type(sample).__name__}')
        size = tuple(sample.metainfo['ori_shape'][:2])
        if self.crf is not None or return_cams:
            up = self.upsample(cams, size)
            label = self.cams_to_label(up, tags, sample, wait=False)
        else:
            label = self.banded_label(cams, tags, size)
        set_label(sample, label if isinstance(label, PendingLabel) else label.cpu())
        sample.set_metainfo(dict(tags=list(tags)))
        if return_cams:
            sample.set_data(dict(cams=up.half().cpu()))

    def upsample(self, cams: Tensor, size: Tuple[int, int],
                 rows: Optional[slice] = None) -> Tensor:
        """Bilinear upsampling of (K, hp, wp) maps to ``size`` (or its ``rows``)."""
        K, hp, wp = cams.shape
        zero = torch.zeros(1, dtype=torch.long, device=cams.device)
        ry = bilinear_resize_matrices(zero, zero + hp, hp, size[0])[0]  # (H, hp)
        rx = bilinear_resize_matrices(zero, zero + wp, wp, size[1])[0]  # (W, wp)
        if rows is not None:
            ry = ry[rows]
        up = ry @ cams.float() @ rx.t()  # (K, rows, W)
        return up.half().float() if self.quirks.cam_fp16 else up

    def banded_label(self, cams: Tensor, tags: List[int], size: Tuple[int, int]) -> Tensor:
        """Label map at ``size``, computed in bands of rows to bound memory."""
        H, W = size
        band = max(1, (1 << 22) // max(W * (cams.shape[0] + 1), 1))
        label = torch.empty(H, W, dtype=torch.long, device=cams.device)
        for r0 in range(0, H, band):
            rows = slice(r0, min(H, r0 + band))
            label[rows] = self.cams_to_label(self.upsample(cams, size, rows), tags, None)
        return label

    def label_channels(self, cams: Tensor, tags: List[int]) -> Tuple[Tensor, Tensor]:
        """(M, h, w) scores and their (M,) output channels: background first, if any.

        The background is ``1 - max`` of the CAMs (1 without tags).
        """
        classes = torch.as_tensor(tags, dtype=torch.long, device=cams.device)
        if not self.with_background:
            return cams, classes
        bg = 1 - cams.amax(dim=0, keepdim=True) if cams.shape[0] else \
            cams.new_ones(1, *cams.shape[-2:])
        return torch.cat([bg, cams], dim=0), torch.cat([classes.new_zeros(1), classes + 1])

    def seg_logits(self, cams: Tensor, tags: List[int]) -> Tensor:
        """(C, h, w) scores from (K, h, w) CAMs of ``tags``."""
        probs, classes = self.label_channels(cams, tags)
        logits = cams.new_zeros(self.num_classes + int(self.with_background), *cams.shape[-2:])
        logits[classes] = probs
        return logits

    def cams_to_label(self, cams: Tensor, tags: List[int], sample, wait: bool = True) -> Label:
        """(K, h, w) CAMs -> (h, w) label map, or a ``PendingLabel`` with ``wait=False``."""
        probs, classes = self.label_channels(cams, tags)
        if not probs.shape[0]:  # no tags and no background
            return torch.full(cams.shape[-2:], 255, dtype=torch.long, device=cams.device)
        if self.label_map is not None:
            classes = self.label_map.to(classes.device)[classes]
        if self.crf is not None:
            # 255 where the CRF is not confident.
            return self.crf.label(probs, classes, sample) if wait else self.crf.submit(
                probs, classes, sample)
        return classes[probs.argmax(dim=0)]
