"""Segmentors that mmseg lacks (registered in ``mmseg.registry.MODELS``)."""
from .multi_scale_encoder_decoder import MultiScaleEncoderDecoder
from .tagclip_segmentor import TagCLIPSegmentor, slide_windows

__all__ = ['MultiScaleEncoderDecoder', 'TagCLIPSegmentor', 'slide_windows']
