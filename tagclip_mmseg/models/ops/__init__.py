"""Pure, batched tensor routines shared by the tagger and the pseudo-labeler."""
from .attention import (AttentionVote, affinity_from_attention, caa_refine, dmar_class_boxes,
                        dmar_refine)
from .box_masks import (RegionBox, binarize_like_reference, boxes_from_scores,
                        component_boxes_union, connected_components, quantize_like_reference,
                        region_bbox)
from .crops import bilinear_resize_matrices, crop_resize_bilinear, crop_resize_nearest
from .normalize import GRAD_CAM_EPS, normalize_grad_cam
from .synonyms import class_softmax

__all__ = [
    'AttentionVote', 'affinity_from_attention', 'caa_refine', 'dmar_class_boxes', 'dmar_refine',
    'RegionBox', 'binarize_like_reference', 'boxes_from_scores', 'component_boxes_union',
    'connected_components', 'quantize_like_reference', 'region_bbox', 'normalize_grad_cam',
    'GRAD_CAM_EPS', 'crop_resize_bilinear', 'crop_resize_nearest', 'bilinear_resize_matrices',
    'class_softmax'
]
