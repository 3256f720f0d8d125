from .clip_es import CLIPESPseudoLabeler
from .crf import DenseCRF, PendingLabel, crf_reference_image, shutdown_crf_pools

__all__ = [
    'CLIPESPseudoLabeler', 'DenseCRF', 'PendingLabel', 'crf_reference_image', 'shutdown_crf_pools'
]
