"""CLIP-ES pseudo-labeler: image tags -> Grad-CAMs -> affinity-refined masks.

docs/method.md §6, for a batch of equal-size images and their tag lists:

1. Blocks 1..L-1 run without gradients; the head-averaged attention of the
   configured CAA layers is summed on the fly.
2. The last block runs once per image from its ``ln_1`` output ``G``. The
   image embedding (mean of the patch tokens after ``ln_post``, then ``proj``)
   is classified against the image's tags plus background words; the target of
   tag ``k`` is its softmax probability (with ``synonyms='max'``, the class
   score after the max over its names, so the gradient flows through the name
   that attains it; docs/method.md, "Synonyms").
3. Grad-CAM: ``ReLU(sum_d mean_hw(dy_k/dG_d) * G_d)``, min-max normalised.
   The gradients of all of an image's tags are backpropagated together
   through the last block by a hand-written backward that only forms what
   Grad-CAM uses, the token mean
   (:class:`~tagclip_mmseg.models.clip.last_block_grad.LastBlockGrad`); an extra tag
   costs a fraction of a block forward, not a forward plus a backward.
4. Class-aware attention affinity (Sinkhorn-balanced, symmetrised, squared
   attention; computed once per image) refines each CAM inside its box mask.
5. Maps are normalised at patch resolution, upsampled to the original size,
   a background channel ``1 - max`` is added, and the argmax gives the mask.

With the ``autocast`` option only the ViT (blocks 1..L-1, the last block and
its hand-written backward) runs under autocast; the softmax head, the CAMs,
their normalisation, the affinity, the refinement and the argmax run in fp32.

Grad-CAM runs inside mmengine's test loop, which wraps everything in
``torch.no_grad()``; the two small autograd steps it keeps (the softmax head
and the activation's derivative) are therefore explicitly wrapped in
``torch.enable_grad()`` (docs/compatibility.md trap 14).
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from ...utils.checks import check_finite, check_range
from ...utils.class_names import ClassName
from ...utils.label_maps import LabelMap, label_lut
from ...utils.quirks import QuirksLike
from ..clip.frozen_model import FrozenCLIPModel, Vocabulary, full_precision
from ..clip.last_block_grad import LastBlockGrad
from ..clip.presets import resolve_templates
from ..ops import (AttentionVote, affinity_from_attention, bilinear_resize_matrices, caa_refine,
                   normalize_grad_cam)
from .crf import Label, PendingLabel, collect_pending_labels, set_label

__all__ = ['CLIPESPseudoLabeler']


@MODELS.register_module()
class CLIPESPseudoLabeler(FrozenCLIPModel):
    """CLIP-ES CAMs and pseudo masks from image-level tags.

    Tags come from the data samples' ``tags`` metainfo (a tags file or the
    ground-truth labels, chosen in the dataset config) or, when ``tagger`` is
    given, from a TagCLIP model run on the same images in the same pass.

    Args:
        class_names (str | Sequence[str | Sequence[str]]): Foreground
            vocabulary for the CAM prompts, e.g. the preset ``'voc-cam'``
            (CLIP-ES's renamed classes such as 'person with
            clothes,people,human') or a list; indices match the tag indices.
        background_words (str | Sequence[str]): Softmax competitors (a preset
            name or a list).
        templates (str | Sequence[str]): CAM prompt templates: ``'clip-es'``
            (``'a clean origami {}.'``) or a list.
        caa_layers (Sequence[int]): 0-based layers averaged for the affinity
            (``range(4, 11)`` for VOC in TagCLIP's setting, ``range(4, 12)``
            for COCO and COCO-Stuff).
        caa_box_thr (float): Box threshold relative to each CAM's max (0.4 VOC,
            0.7 COCO), in [0, 1].
        with_background (bool): Add the ``1 - max`` background channel; off for
            COCO-Stuff, where labels are the argmax over tag maps.
        label_map (Sequence[int] | str, optional): Maps the output class index
            (after the background offset) to the saved label (e.g. 171 -> 27
            classes); a list or a name such as ``'cocostuff171_to_27'`` (see
            :func:`~tagclip_mmseg.utils.label_maps.label_lut`).
        quirks (str | dict | Quirks): ``'reference'`` (default) or
            ``'fixed'``, or single fields; this model reads ``box_clamp``,
            ``pos_embed_fp16``, ``cam_fp16`` and ``grad_cam_double_norm``, and
            its CRF ``crf_reference_image`` (docs/modes.md).
        tagger (dict, optional): Config of a :class:`TagCLIP` whose tags are
            used instead of the samples' ``tags``; it takes this model's
            quirks, synonym rule and ``autocast`` unless it sets ``quirks`` (or
            the deprecated ``mode``), ``synonyms`` or ``autocast``.
        return_cams (bool): Attach the (K, H, W) float16 CAMs to each sample.
        crf (dict, optional): Dense CRF post-processing options, see
            :class:`~tagclip_mmseg.models.pseudo_labelers.DenseCRF`. Unless
            they set ``quirks`` (or the deprecated ``image_mode``), the CRF
            follows this model's quirks: one switch for the whole labeler.
        **kwargs: ``clip``, ``text_cache_dir``, ``data_preprocessor``,
            ``init_cfg`` (and the deprecated ``mode``) of
            :class:`FrozenCLIPModel`.
    """

    sample_type = SegDataSample

    def __init__(self,
                 class_names: Union[str, Sequence[ClassName]],
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
        self.set_vocabulary(class_names, background_words)
        self.caa_layers = self.layer_indices('caa_layers', caa_layers)
        self.caa_box_thr = check_range('caa_box_thr', caa_box_thr, 0, 1)
        self.with_background = with_background
        self.register_buffer('label_map', None if label_map is None else label_lut(label_map),
                             persistent=False)
        self.return_cams = return_cams
        self.tagger = None
        if tagger is not None:
            tagger = dict(tagger)
            if 'quirks' not in tagger and 'mode' not in tagger:
                tagger = dict(tagger, quirks=self.quirks)
            tagger = dict(tagger, synonyms=tagger.get('synonyms', self.synonyms))
            tagger.setdefault('autocast', self.autocast_dtype)
            self.tagger = MODELS.build(tagger)
        if self.tagger is not None and self.tagger.num_classes not in (0, len(self.class_names)):
            raise ValueError(f'the tagger has {self.tagger.num_classes} classes but the labeler '
                             f'has {len(self.class_names)}; they must share class indices')
        self.crf = None
        if crf is not None:
            crf = dict(crf)
            if 'quirks' not in crf and 'image_mode' not in crf:
                crf['quirks'] = self.quirks
            self.crf = MODELS.build(dict(type='DenseCRF', **crf))

    # ------------------------------------------------------------ inference
    def predict(self, inputs: List[Tensor], data_samples: list, **settings) -> list:
        """Masks (and CAMs) of every image; a CRF in worker processes runs
        the images in parallel, and this waits for them before returning.

        ``settings`` are :meth:`predict_batch`'s per-call ``vocabulary`` and
        ``return_cams``.
        """
        super().predict(inputs, data_samples, **settings)
        collect_pending_labels(data_samples, device='cpu')
        return data_samples

    def predict_batch(self, images: Tensor, data_samples: list,
                      vocabulary: Optional[Vocabulary] = None,
                      return_cams: Optional[bool] = None) -> None:
        """Fill a batch's samples (see :meth:`predict`).

        Args:
            images (Tensor): (B, 3, H, W) normalised images of one size.
            data_samples (list): Their samples, with ``tags`` unless the
                labeler has a tagger.
            vocabulary (Vocabulary, optional): This call's CAM vocabulary
                (:meth:`resolve_vocabulary`); default the model's own.
            return_cams (bool, optional): This call's ``return_cams``;
                default the model's.
        """
        if self.tagger is not None:
            if vocabulary is not None:
                raise ValueError('a per-call vocabulary needs a labeler without an in-pass '
                                 'tagger (give the tags in the samples)')
            tags = self.tagger.tag(images)['tags'].cpu()  # one host copy per batch
            tag_lists = [t.nonzero().flatten().tolist() for t in tags]
        else:
            num_classes = len((vocabulary or self.vocabulary).class_names)
            tag_lists = [self._sample_tags(s, num_classes) for s in data_samples]
        cams, grid_hw = self.compute_cams(images, tag_lists, vocabulary)
        return_cams = self.return_cams if return_cams is None else return_cams
        for i, sample in enumerate(data_samples):
            self._fill(sample, cams[i][:len(tag_lists[i])], tag_lists[i], grid_hw, return_cams)

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
            vocabulary (Vocabulary, optional): This call's vocabulary; default
                the model's own.

        Returns:
            tuple: (B, K_max, hp, wp) fp32 refined CAMs (rows beyond an
            image's tag count are zero) and the token grid.

        Raises:
            NonFiniteError: When a CAM holds NaN or inf (an fp16 overflow,
                broken weights), rather than returning a mask from it.
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
        pair_img = torch.tensor([b for b, t in enumerate(tag_lists) for _ in t], device=images.device)
        pair_cls = torch.tensor([c for t in tag_lists for c in t], device=images.device)
        pair_slot = torch.tensor([k for t in tag_lists for k in range(len(t))], device=images.device)
        cams, last_attn = self.grad_cam(out.hidden, pair_img, pair_cls, tag_lists, vocabulary)
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

        The last block runs once per image; the gradients of all of an image's
        tag probabilities with respect to its ``ln_1`` output are then
        backpropagated together by :class:`LastBlockGrad`. Grad-CAM only
        needs each gradient's mean over the patch tokens, which lets that
        backward skip the input projection, most of the attention backward and
        half of the MLP backward: an extra tag costs well under half a block
        forward, instead of a block forward plus a backward per tag.

        Args:
            hidden (Tensor): (B, L, D) residual stream entering the last block.
            pair_img (Tensor): (P,) image of each pair.
            pair_cls (Tensor): (P,) tag class of each pair.
            tag_lists (list[list[int]]): Tags per image (softmax support);
                pair ``p`` is tag number ``k`` of its image, in list order.
            vocabulary (Vocabulary, optional): This call's vocabulary; default
                the model's own.

        Returns:
            tuple: (P, N) min-max normalised CAMs (:func:`normalize_grad_cam`)
            and the last block's (B, L, L)
            attention (``None`` when it is not a CAA layer).
        """
        with full_precision(hidden.device):  # also when called on its own under autocast
            return self._grad_cam(hidden, pair_img, pair_cls, tag_lists, vocabulary)

    def _grad_cam(self, hidden: Tensor, pair_img: Tensor, pair_cls: Tensor,
                  tag_lists: List[List[int]], vocabulary: Optional[Vocabulary]
                  ) -> Tuple[Tensor, Optional[Tensor]]:
        vit = self.clip.visual
        voc = vocabulary or self.vocabulary
        names = voc.class_names + voc.background_words
        text = self.text_embeddings(names, self.templates)
        B, device = hidden.shape[0], hidden.device
        k_max = max(len(t) for t in tag_lists)
        pair_slot = torch.tensor([k for t in tag_lists for k in range(len(t))], device=device)
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
            # The CRF and the saved CAMs need every class map at full size.
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
        """Bilinear upsampling of (K, hp, wp) maps to ``size`` (or to the
        output rows ``rows`` of it).

        ``align_corners=False``, like the OpenCV ``INTER_LINEAR`` resize of the
        reference, written as two interpolation matrices so that a band of
        output rows can be produced on its own (:meth:`banded_label`). With
        ``quirks.cam_fp16`` the result is rounded to fp16, as the reference
        stores its CAMs.
        """
        K, hp, wp = cams.shape
        zero = torch.zeros(1, dtype=torch.long, device=cams.device)
        ry = bilinear_resize_matrices(zero, zero + hp, hp, size[0])[0]  # (H, hp)
        rx = bilinear_resize_matrices(zero, zero + wp, wp, size[1])[0]  # (W, wp)
        if rows is not None:
            ry = ry[rows]
        up = ry @ cams.float() @ rx.t()  # (K, rows, W)
        return up.half().float() if self.quirks.cam_fp16 else up

    def banded_label(self, cams: Tensor, tags: List[int], size: Tuple[int, int]) -> Tensor:
        """Label map at ``size``, computed in bands of rows.

        A full-size float stack of an 8000x6000 photo takes about 0.2 GB per
        tag plus the background channel and the argmax's copies; bands of
        about 16 MB keep the peak flat whatever the image size.
        """
        H, W = size
        band = max(1, (1 << 22) // max(W * (cams.shape[0] + 1), 1))
        label = torch.empty(H, W, dtype=torch.long, device=cams.device)
        for r0 in range(0, H, band):
            rows = slice(r0, min(H, r0 + band))
            label[rows] = self.cams_to_label(self.upsample(cams, size, rows), tags, None)
        return label

    def cams_to_label(self, cams: Tensor, tags: List[int], sample, wait: bool = True) -> Label:
        """(K, h, w) full-size CAMs -> (h, w) long label map (CRF-refined when
        configured; the CRF reads the original image from ``sample``).

        With ``wait=False`` a CRF with workers returns a
        :class:`~tagclip_mmseg.models.pseudo_labelers.crf.PendingLabel`:
        the caller hands it to ``set_label`` and calls
        ``collect_pending_labels`` before its ``predict`` returns.
        """
        H, W = cams.shape[-2:]
        tag_t = torch.as_tensor(tags, dtype=torch.long, device=cams.device)
        if self.with_background:
            bg = 1 - cams.amax(dim=0, keepdim=True) if cams.shape[0] else cams.new_ones(1, H, W)
            probs = torch.cat([bg, cams], dim=0)
            classes = torch.cat([tag_t.new_zeros(1), tag_t + 1])
        else:
            if not cams.shape[0]:
                return torch.full((H, W), 255, dtype=torch.long, device=cams.device)
            probs, classes = cams, tag_t
        if self.label_map is not None:
            classes = self.label_map.to(classes.device)[classes]
        if self.crf is not None:
            # 255 where the CRF is not confident.
            return self.crf.label(probs, classes, sample) if wait else self.crf.submit(
                probs, classes, sample)
        return classes[probs.argmax(dim=0)]

