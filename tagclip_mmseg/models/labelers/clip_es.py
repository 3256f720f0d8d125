"""CLIP-ES pseudo-labeller: image tags -> Grad-CAMs -> affinity-refined masks.

Spec section 6, for a batch of equal-size images and their tag lists:

1. Blocks 1..L-1 run without gradients; the head-averaged attention of the
   configured CAA layers is summed on the fly.
2. The last block runs with gradients from its ``ln_1`` output ``G``. The
   image embedding (mean of the patch tokens after ``ln_post``, then ``proj``)
   is classified against the image's tags plus background words; the target of
   tag ``k`` is its softmax probability.
3. Grad-CAM: ``ReLU(sum_d mean_hw(dy_k/dG_d) * G_d)``, min-max normalised.
   ``G`` is replicated once per tag so one backward pass yields every tag's
   gradient (parameters are frozen, so no parameter gradients are computed).
4. Class-aware attention affinity (Sinkhorn-balanced, symmetrised, squared
   attention; computed once per image) refines each CAM inside its box mask.
5. Maps are normalised at patch resolution, upsampled to the original size,
   a background channel ``1 - max`` is added, and the argmax gives the mask.

Grad-CAM runs inside mmengine's test loop, which wraps everything in
``torch.no_grad()``; the gradient part is therefore explicitly wrapped in
``torch.enable_grad()`` (OpenMMLab trap 14).
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from torch import Tensor

from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from ..base import FrozenCLIPModel
from ..ops import AttentionVote, affinity_from_attention, caa_refine, minmax_normalize
from ..presets import resolve_templates
from ..prompts import ClassName

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
            0.7 COCO).
        with_background (bool): Add the ``1 - max`` background channel; off for
            COCO-Stuff, where labels are the argmax over tag maps.
        label_map (Sequence[int], optional): Maps the output class index (after
            the background offset) to the saved label (e.g. 171 -> 27 classes).
        mode (str): 'faithful' (reference quirks: box clamping, fp16-rounded
            positional embedding, CAMs stored in fp16) or 'clean'.
        tagger (dict, optional): Config of a :class:`TagCLIP` whose tags are
            used instead of the samples' ``tags``.
        return_cams (bool): Attach the (K, H, W) float16 CAMs to each sample.
        crf (dict, optional): Dense CRF post-processing options, see
            :class:`~tagclip_mmseg.models.labelers.DenseCRF`.
        **kwargs: ``clip``, ``text_cache_dir``, ``data_preprocessor``,
            ``init_cfg`` of :class:`FrozenCLIPModel`.
    """

    def __init__(self,
                 class_names: Union[str, Sequence[ClassName]],
                 background_words: Union[str, Sequence[str]] = (),
                 templates: Union[str, Sequence[str]] = 'clip-es',
                 caa_layers: Sequence[int] = tuple(range(4, 11)),
                 caa_box_thr: float = 0.4,
                 with_background: bool = True,
                 label_map: Optional[Sequence[int]] = None,
                 mode: str = 'faithful',
                 tagger: Optional[dict] = None,
                 return_cams: bool = False,
                 crf: Optional[dict] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in ('faithful', 'clean'):
            raise ValueError(f"mode must be 'faithful' or 'clean', got {mode!r}")
        n_layers = self.clip.visual.num_layers
        if not caa_layers or any(not -n_layers <= i < n_layers for i in caa_layers):
            raise ValueError(f'caa_layers {tuple(caa_layers)} must be non-empty 0-based indices '
                             f'of the {n_layers} vision layers')
        self.set_vocabulary(class_names, background_words)
        self.templates = resolve_templates(templates)
        self.caa_layers = tuple(sorted({i % n_layers for i in caa_layers}))
        self.caa_box_thr = caa_box_thr
        self.with_background = with_background
        self.register_buffer(
            'label_map',
            torch.as_tensor(label_map, dtype=torch.long) if label_map is not None else None,
            persistent=False)
        self.mode = mode
        self.return_cams = return_cams
        self.clip.visual.pos_embed_fp16_round = mode == 'faithful'
        self.tagger = MODELS.build(tagger) if tagger is not None else None
        if self.tagger is not None and self.tagger.num_classes not in (0, len(self.class_names)):
            raise ValueError(f'the tagger has {self.tagger.num_classes} classes but the labeller '
                             f'has {len(self.class_names)}; they must share class indices')
        self.crf = MODELS.build(dict(type='DenseCRF', **crf)) if crf is not None else None

    @property
    def faithful(self) -> bool:
        return self.mode == 'faithful'

    # ------------------------------------------------------------ inference
    def predict_batch(self, images: Tensor, data_samples: list) -> None:
        if self.tagger is not None:
            tags = self.tagger.tag(images)['tags']
            tag_lists = [t.nonzero().flatten().tolist() for t in tags]
        else:
            tag_lists = [self._sample_tags(s) for s in data_samples]
        cams, grid_hw = self.compute_cams(images, tag_lists)
        for i, sample in enumerate(data_samples):
            self._fill(sample, cams[i][:len(tag_lists[i])], tag_lists[i], grid_hw)

    def _sample_tags(self, sample) -> List[int]:
        tags = sample.metainfo.get('tags')
        if tags is None:
            raise KeyError(f"sample {sample.metainfo.get('img_path')} has no 'tags': set the "
                           "dataset's tag_source ('file' or 'gt') or give the labeller a tagger")
        tags = sorted({int(t) for t in tags})
        bad = [t for t in tags if not 0 <= t < self.num_classes]
        if bad:
            raise ValueError(f"tags {bad} of {sample.metainfo.get('img_path')} are outside the "
                             f'{self.num_classes}-class vocabulary')
        return tags

    def compute_cams(self, images: Tensor, tag_lists: List[List[int]]) -> Tuple[Tensor, tuple]:
        """Refined CAMs at patch resolution for every image and tag.

        Args:
            images (Tensor): (B, 3, H, W) normalised images of one size.
            tag_lists (list[list[int]]): Foreground tag indices per image.

        Returns:
            tuple: (B, K_max, hp, wp) refined CAMs (rows beyond an image's
            tag count are zero) and the token grid.
        """
        vit = self.clip.visual
        last = vit.num_layers - 1
        avg = AttentionVote(avg_layers=self.caa_layers, vote_min=None)
        with torch.no_grad():
            out = vit(images, attn_callback=avg.update, stop_before=last)
        hp, wp = out.grid_hw
        B = images.shape[0]
        k_max = max((len(t) for t in tag_lists), default=0)
        if k_max == 0:
            return images.new_zeros(B, 0, hp, wp, dtype=torch.float32), out.grid_hw
        pair_img = torch.tensor([b for b, t in enumerate(tag_lists) for _ in t], device=images.device)
        pair_cls = torch.tensor([c for t in tag_lists for c in t], device=images.device)
        pair_slot = torch.tensor([k for t in tag_lists for k in range(len(t))], device=images.device)
        cams, last_attn = self.grad_cam(out.hidden, pair_img, pair_cls, tag_lists)
        if last_attn is not None:
            avg.update(last, last_attn)
        affinity = affinity_from_attention(avg.finalize())
        padded = cams.new_zeros(B, k_max, hp * wp)
        valid = torch.zeros(B, k_max, dtype=torch.bool, device=cams.device)
        padded[pair_img, pair_slot] = cams
        valid[pair_img, pair_slot] = True
        refined = caa_refine(affinity, padded, out.grid_hw, self.caa_box_thr,
                             clamp_quirk=self.faithful, valid=valid)
        return refined.view(B, k_max, hp, wp), out.grid_hw

    def grad_cam(self, hidden: Tensor, pair_img: Tensor, pair_cls: Tensor,
                 tag_lists: List[List[int]]) -> Tuple[Tensor, Optional[Tensor]]:
        """Grad-CAM of every (image, tag) pair with one backward pass.

        Args:
            hidden (Tensor): (B, L, D) residual stream entering the last block.
            pair_img (Tensor): (P,) image of each pair.
            pair_cls (Tensor): (P,) tag class of each pair.
            tag_lists (list[list[int]]): Tags per image (softmax support).

        Returns:
            tuple: (P, N) min-max normalised CAMs and the last block's (B, L, L)
            attention (``None`` when it is not a CAA layer).
        """
        vit = self.clip.visual
        blk = vit.transformer.resblocks[vit.num_layers - 1]
        text = self.text_embeddings(self.class_names + self.background_words, self.templates)
        c_fg = self.num_classes
        # Softmax support of each image: its tags plus every background word.
        support = torch.zeros(hidden.shape[0], text.shape[0], dtype=torch.bool,
                              device=hidden.device)
        support[pair_img, pair_cls] = True
        support[:, c_fg:] = True
        need_last = (vit.num_layers - 1) in self.caa_layers
        with torch.enable_grad():
            x = hidden.detach()[pair_img]
            g = blk.ln_1(x).detach().requires_grad_(True)
            y, w = blk.forward_from_normed(x, g, need_weights=need_last)
            feats = vit.ln_post(y[:, 1:]).mean(dim=1) @ vit.proj
            logits = 100. * F.normalize(feats.float(), dim=-1) @ text.t()
            logits = logits.masked_fill(~support[pair_img], float('-inf'))
            probs = logits.softmax(dim=-1)
            target = probs.gather(1, pair_cls[:, None]).sum()
            (grad, ) = torch.autograd.grad(target, g)
        act = g.detach()[:, 1:].float()  # (P, N, D)
        alpha = grad[:, 1:].float().mean(dim=1, keepdim=True)  # (P, 1, D)
        cam = F.relu((act * alpha).sum(dim=-1))  # (P, N)
        cam = minmax_normalize(cam, dim=1, eps=1e-7)
        last_attn = None
        if need_last:
            # Every replica of an image shares its last-block attention.
            first = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
            first.scatter_reduce_(0, pair_img, torch.arange(len(pair_img), device=hidden.device),
                                  'amin', include_self=False)
            last_attn = w.detach()[first].float()
            # Images without tags have no replica; their last-layer map is
            # never used (they get no CAM), so any row is fine there.
        return cam, last_attn

    def _fill(self, sample, cams: Tensor, tags: List[int], grid_hw: tuple) -> None:
        if not isinstance(sample, SegDataSample):
            raise TypeError('CLIPESPseudoLabeler expects mmseg SegDataSample inputs (pack with '
                            f'PackSegInputs); got {type(sample).__name__}')
        H, W = sample.metainfo['ori_shape'][:2]
        if cams.shape[0]:
            up = F.interpolate(cams[None].float(), size=(H, W), mode='bilinear',
                               align_corners=False)[0]
        else:
            up = cams.new_zeros(0, H, W)
        if self.faithful:
            up = up.half().float()  # the reference stores CAMs as float16
        label = self.cams_to_label(up, tags, sample)
        sample.set_data(dict(pred_sem_seg=PixelData(data=label[None].cpu())))
        sample.set_metainfo(dict(tags=list(tags)))
        if self.return_cams:
            sample.set_data(dict(cams=up.half().cpu()))

    def cams_to_label(self, cams: Tensor, tags: List[int], sample) -> Tensor:
        """(K, H, W) CAMs -> (H, W) long label map (optionally CRF-refined)."""
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
        # CRF may return -1 for pixels it is not confident about (ignore).
        idx = self.crf(probs, sample) if self.crf is not None else probs.argmax(dim=0)
        idx = idx.to(classes.device)
        label = classes[idx.clamp(min=0)]
        if self.label_map is not None:
            label = self.label_map.to(label.device)[label]
        return label.masked_fill(idx < 0, 255)

    def empty_result(self, data_sample) -> None:
        H, W = data_sample.metainfo.get('ori_shape', (1, 1))[:2]
        data_sample.set_data(
            dict(pred_sem_seg=PixelData(data=torch.full((1, H, W), 255, dtype=torch.long))))

    def reuse_result(self, data_sample) -> None:
        mask = torch.as_tensor(data_sample.metainfo['pred_seg_map']).long()
        data_sample.set_data(dict(pred_sem_seg=PixelData(data=mask.view(1, *mask.shape[-2:]))))
