from .clip_es import CLIPESPseudoLabeler
from .crf import DenseCRF, crf_reference_image

__all__ = ['CLIPESPseudoLabeler', 'DenseCRF', 'crf_reference_image']
