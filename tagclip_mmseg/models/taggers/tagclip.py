"""TagCLIP multi-label tagging (docs/method.md, "TagCLIP, step by step")."""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmpretrain.structures import DataSample
from mmseg.registry import MODELS
from torch import Tensor

from ...utils.checks import check_finite, check_range
from ...utils.class_names import ClassName
from ...utils.normalize import minmax_normalize
from ...utils.quirks import QuirksLike
from ...utils.thresholds import relative_threshold, relative_threshold_mask
from ..clip.frozen_model import FrozenCLIPModel, Vocabulary, full_precision
from ..clip.presets import resolve_background, resolve_templates
from ..ops import AttentionVote, crop_resize_bilinear, crop_resize_nearest, dmar_refine, region_bbox

__all__ = ['TagCLIP', 'TagCLIPOutput']


@dataclass
class TagCLIPOutput:
    """What :meth:`TagCLIP.tag` returns for a batch (fp32).

    Attributes:
        p_coarse (Tensor): (B, N, C_all) coarse patch probabilities.
        p_hat (Tensor): (B, N, C_all) DMAR's first pass.
        p_ref (Tensor): (B, N, C_all) refined patch probabilities.
        p_local (Tensor): (B, C_fg) local scores.
        p_global (Tensor): (B, C_fg) CWR crop scores; 0 where not done.
        p_final (Tensor): (B, C_fg) fused scores.
        tags (Tensor): (B, C_fg) bool tags.
        cwr_done (Tensor): (B, C_fg) bool, which classes CWR reidentified.
        grid_hw (tuple): Token grid (rows, cols).
    """
    p_coarse: Tensor
    p_hat: Tensor
    p_ref: Tensor
    p_local: Tensor
    p_global: Tensor
    p_final: Tensor
    tags: Tensor
    cwr_done: Tensor
    grid_hw: Tuple[int, int]


@MODELS.register_module()
class TagCLIP(FrozenCLIPModel):
    """The TagCLIP tagger as an mmengine model.

    Args:
        class_names (str | Sequence[str | Sequence[str]], optional):
            Foreground vocabulary (a preset or a list); ``None`` until set.
        background_words (str | Sequence[str]): Softmax competitors.
        templates (str | Sequence[str]): A template preset or a list.
        vote_k (int): DMAR vote count (1 to the CLIP's depth).
        avg_layers (Sequence[int]): 0-based layers averaged for DMAR.
        self_attn_mask_value (float): Coarse pass's last-layer mask (<= 0).
        cwr (bool): Run class-wise reidentification.
        cwr_ratio (float): Relative candidate threshold, in [0, 1].
        cwr_region_thr (float): Region threshold of a candidate, in [0, 1).
        cwr_crop_size (int, optional): Crop side; default the CLIP input size.
        cwr_mask_value (float): [CLS]-to-outside attention mask (<= 0).
        fusion_lambda (float): Weight of the local score, in [0, 1].
        tag_ratio (float): Relative tag threshold, in [0, 1].
        quirks (str | dict | Quirks): Reference quirks (docs/modes.md).
        cwr_batch_size (int): Crops per forward in CWR; bounds memory.
        **kwargs: ``clip``, ``text_cache_dir``, ``autocast``,
            ``images_per_forward``, ``truncate_prompts``, ``synonyms``,
            ``data_preprocessor`` and ``init_cfg`` of ``FrozenCLIPModel``.
    """

    sample_type = DataSample

    def __init__(self,
                 class_names: Union[None, str, Sequence[ClassName]] = None,
                 background_words: Union[str, Sequence[str]] = (),
                 templates: Union[str, Sequence[str]] = 'tagclip',
                 vote_k: int = 4,
                 avg_layers: Sequence[int] = (8, 9, 10),
                 self_attn_mask_value: float = -100.,
                 cwr: bool = True,
                 cwr_ratio: float = 0.5,
                 cwr_region_thr: float = 0.5,
                 cwr_crop_size: Optional[int] = None,
                 cwr_mask_value: float = -1000.,
                 fusion_lambda: float = 0.5,
                 tag_ratio: float = 0.5,
                 quirks: QuirksLike = 'reference',
                 cwr_batch_size: int = 32,
                 **kwargs) -> None:
        super().__init__(quirks=quirks, **kwargs)
        self.avg_layers = self.layer_indices('avg_layers', avg_layers)
        self.vote_k = check_range('vote_k', vote_k, 1, self.clip.visual.num_layers, integer=True)
        self.self_attn_mask_value = check_range('self_attn_mask_value', self_attn_mask_value,
                                                high=0)
        self.cwr_ratio = check_range('cwr_ratio', cwr_ratio, 0, 1)
        self.cwr_region_thr = check_range('cwr_region_thr', cwr_region_thr, 0, 1,
                                          high_open=True)
        check_range('cwr_crop_size', cwr_crop_size, 1, integer=True, allow_none=True)
        self.cwr_mask_value = check_range('cwr_mask_value', cwr_mask_value, high=0)
        self.fusion_lambda = check_range('fusion_lambda', fusion_lambda, 0, 1)
        self.tag_ratio = check_range('tag_ratio', tag_ratio, 0, 1)
        self.cwr_batch_size = check_range('cwr_batch_size', cwr_batch_size, 1, integer=True)
        self.background_words = resolve_background(background_words)
        self.templates = resolve_templates(templates)
        self.cwr = cwr
        self.cwr_crop_size = cwr_crop_size or self.clip.visual.input_resolution
        if class_names is not None:
            self.set_vocabulary(class_names, self.background_words)

    def classifier(self, vocabulary: Optional[Vocabulary] = None) -> Tensor:
        """(R, E) text-row embeddings, foreground first.

        Args:
            vocabulary (Vocabulary, optional): This call's vocabulary.
        """
        voc = self.call_vocabulary(vocabulary)
        return self.text_embeddings(voc.class_names + voc.background_words, self.templates)

    def softmax_names(self, vocabulary: Optional[Vocabulary] = None) -> Tuple[ClassName, ...]:
        """Foreground classes then background words (C_all)."""
        voc = self.call_vocabulary(vocabulary)
        return voc.class_names + voc.background_words

    def predict_batch(self, images: Tensor, data_samples: list,
                      vocabulary: Optional[Vocabulary] = None) -> None:
        """Tag a batch and fill its samples (``vocabulary``: this call's)."""
        out = self.tag(images, vocabulary)
        scores, tags = out.p_final.float().cpu(), out.tags.cpu()  # one host copy per batch
        for i, sample in enumerate(data_samples):
            self.fill_sample(sample, scores[i], tags[i])

    def tensor_batch(self, images: Tensor, data_samples: list) -> Tensor:
        """(B, C) fused scores: ``forward(mode='tensor')``."""
        return self.tag(images).p_final

    @staticmethod
    def fill_sample(sample, scores: Tensor, tags: Tensor) -> None:
        """Set a sample's scores and the sorted indices of its (C,) bool ``tags``."""
        if not isinstance(sample, DataSample):
            raise TypeError('TagCLIP expects mmpretrain DataSample inputs (pack with '
                            f'mmpretrain.PackInputs); got {type(sample).__name__}')
        sample.set_pred_score(scores.float().cpu())
        sample.set_pred_label(tags.nonzero().flatten().cpu())

    @torch.no_grad()
    def tag(self, images: Tensor, vocabulary: Optional[Vocabulary] = None) -> TagCLIPOutput:
        """Run TagCLIP on a batch of equal-size normalised images.

        Args:
            images (Tensor): (B, 3, H, W), sides multiples of the patch size.
            vocabulary (Vocabulary, optional): This call's vocabulary.

        Returns:
            TagCLIPOutput: Scores, tags and intermediates, fp32.

        Raises:
            NonFiniteError: When a score is NaN or inf.
        """
        with full_precision(images.device):
            text = self.classifier(vocabulary)
            c_fg = len(self.call_vocabulary(vocabulary).class_names)
            p_coarse, w, grid_hw = self.coarse_pass(images, text, vocabulary)
            p_ref, p_hat = dmar_refine(w, p_coarse, grid_hw, box_clamp=self.quirks.box_clamp,
                                       return_first_pass=True)
            p_local = p_ref[..., :c_fg].amax(dim=1)
            if self.cwr:
                p_final, done, p_global = self.reidentify(images, p_ref, p_local, grid_hw, text,
                                                          vocabulary)
            else:
                p_final, p_global = p_local, torch.zeros_like(p_local)
                done = torch.zeros_like(p_local, dtype=torch.bool)
            check_finite(p_final, 'TagCLIP scores (image, class)')
            tags = relative_threshold_mask(p_final, self.tag_ratio)
        return TagCLIPOutput(p_coarse=p_coarse, p_hat=p_hat, p_ref=p_ref, p_local=p_local,
                             p_global=p_global, p_final=p_final, tags=tags, cwr_done=done,
                             grid_hw=grid_hw)

    def coarse_pass(self, images: Tensor, text: Tensor, vocabulary: Optional[Vocabulary] = None
                    ) -> Tuple[Tensor, Tensor, Tuple[int, int]]:
        """Self-only last layer -> per-patch probabilities, plus DMAR's ``W``.

        Returns:
            tuple: ``p_coarse`` (B, N, C_all), ``W`` (B, N, N) and the grid.
        """
        vit = self.clip.visual
        p = vit.patch_size
        L = (images.shape[-2] // p) * (images.shape[-1] // p) + 1
        self_only = torch.full((L, L), self.self_attn_mask_value, device=images.device)
        self_only.fill_diagonal_(0)
        vote = AttentionVote(avg_layers=self.avg_layers, vote_min=self.vote_k)
        with self.autocast_context(images.device):  # maps come back in fp32
            out = vit.forward_attention(images, attn_callback=vote.update,
                                        attn_masks={-1: self_only}, weights_before_mask=True,
                                        round_pos_embed_fp16=self.round_pos_embed_fp16)
        tokens = F.normalize(out.tokens[:, 1:].float(), dim=-1)
        p_coarse = self.class_probs(100. * tokens @ text.t(), self.softmax_names(vocabulary))
        return p_coarse, vote.finalize(), out.grid_hw

    def reidentify(self, images: Tensor, p_ref: Tensor, p_local: Tensor, grid_hw: Tuple[int, int],
                   text: Tensor, vocabulary: Optional[Vocabulary] = None
                   ) -> Tuple[Tensor, Tensor, Tensor]:
        """Class-wise reidentification for every candidate of the batch at once.

        Returns:
            tuple: Fused scores (B, C_fg), which classes were reidentified
            (B, C_fg) and their crop scores (B, C_fg; 0 where not done).
        """
        B, N, _ = p_ref.shape
        c_fg = p_local.shape[1]
        hp, wp = grid_hw
        # Candidates: above the relative threshold over all refined columns.
        cand = p_local > relative_threshold(p_ref.flatten(1), self.cwr_ratio)  # (B, C_fg)
        region = minmax_normalize(p_ref[..., :c_fg], dim=1) > self.cwr_region_thr  # (B, N, C_fg)
        region = region.permute(0, 2, 1).reshape(B * c_fg, hp, wp)
        x1, y1, x2, y2, valid = region_bbox(region, box_clamp=self.quirks.box_clamp)
        valid = valid.view(B, c_fg)
        if self.quirks.cwr_early_exit:
            # A degenerate box stops CWR for the image's later candidates.
            stopped = (cand & ~valid).cumsum(dim=1) > 0  # bool cumsum counts in int64
            done = cand & valid & ~stopped
        else:
            done = cand & valid
        pairs = done.flatten().nonzero().flatten()
        p_final = p_local.clone()
        p_global = torch.zeros_like(p_local)
        if pairs.numel() == 0:
            return p_final, done, p_global
        boxes = torch.stack([x1, y1, x2, y2], dim=1)[pairs]
        img_idx = pairs // c_fg
        cls_idx = pairs % c_fg
        crop_probs = torch.cat([
            self._crop_scores(images, region, img_idx[s], pairs[s], boxes[s], text, vocabulary)
            for s in torch.arange(pairs.numel()).split(self.cwr_batch_size)
        ])
        crop_score = crop_probs[torch.arange(pairs.numel(), device=pairs.device), cls_idx]
        p_global[img_idx, cls_idx] = crop_score
        p_final[img_idx, cls_idx] = self.fusion_lambda * p_local[img_idx, cls_idx] + (
            1 - self.fusion_lambda) * crop_score
        return p_final, done, p_global

    def _crop_scores(self, images: Tensor, region: Tensor, img_idx: Tensor, map_idx: Tensor,
                     boxes: Tensor, text: Tensor,
                     vocabulary: Optional[Vocabulary] = None) -> Tensor:
        """Class probabilities (K, C_all) of a batch of masked-[CLS] crops."""
        vit = self.clip.visual
        p = vit.patch_size
        s = self.cwr_crop_size
        g = s // p
        crops = crop_resize_bilinear(images, img_idx, boxes * p, (s, s))
        keep = crop_resize_nearest(region, map_idx, boxes, (g, g)).flatten(1)  # (K, g*g)
        K, L = keep.shape[0], g * g + 1
        mask = torch.zeros(K, 1, L, L, device=images.device, dtype=torch.float32)
        mask[:, 0, 0, 1:] = torch.where(keep, 0., self.cwr_mask_value)
        masks = {i: mask for i in range(vit.num_layers)}
        with self.autocast_context(images.device):
            cls_tok = vit.forward_cls(crops, masks,
                                      round_pos_embed_fp16=self.round_pos_embed_fp16)
        return self.class_probs(100. * F.normalize(cls_tok.float(), dim=-1) @ text.t(),
                                self.softmax_names(vocabulary))
