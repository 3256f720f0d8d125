"""TagCLIP and CLIP-ES models built in one line, for tests and tools.

:data:`VOC_TAGGER` / :data:`VOC_LABELER` are the settings the tools time.
"""
import os
import os.path as osp
from typing import Any, Optional, Union

from torch import nn

from ..models.pseudo_labelers import CLIPESPseudoLabeler
from ..models.taggers import TagCLIP
from ..utils.quirks import QuirksLike

__all__ = ['VOC_TAGGER', 'VOC_LABELER', 'build_tagger', 'build_labeler']

#: The tools' tagger: VOC classes and background words with one template
#: (the template count only changes the cached text embeddings, not the
#: image-side work, and one keeps the first launch short).
VOC_TAGGER = dict(class_names='voc', background_words='voc', templates=('a photo of a {}.', ))

#: The tools' labeler: the VOC pseudo-label config's vocabulary and layers.
VOC_LABELER = dict(class_names='voc-cam', background_words='voc', templates='clip-es',
                   caa_layers=range(4, 11))

ClipLike = Union[str, os.PathLike, dict, nn.Module]


def _build(model_type: type, clip: ClipLike, quirks: Optional[QuirksLike],
           work_dir: Union[None, str, os.PathLike], settings: dict) -> nn.Module:
    if isinstance(clip, (str, os.PathLike)):
        clip = dict(checkpoint=os.fspath(clip))
    if quirks is not None:
        settings['quirks'] = quirks
    if work_dir is not None:
        settings.setdefault('text_cache_dir', osp.join(os.fspath(work_dir), 'cache'))
    return model_type(clip=clip, **settings).eval()


def build_tagger(clip: ClipLike, quirks: Optional[QuirksLike] = None,
                 work_dir: Union[None, str, os.PathLike] = None, **settings: Any) -> TagCLIP:
    """A :class:`~tagclip_mmseg.models.taggers.TagCLIP` in eval mode.

    Args:
        clip: A checkpoint path, a ``clip`` config dict or a CLIP module.
        quirks: ``'reference'``, ``'fixed'``, fields or a ``Quirks``
            (docs/modes.md); None keeps the model's default.
        work_dir: Text embeddings are cached in ``work_dir/cache`` (unless
            ``text_cache_dir`` is given); None: no cache.
        **settings: Any other argument of ``TagCLIP``.
    """
    return _build(TagCLIP, clip, quirks, work_dir, settings)


def build_labeler(clip: ClipLike, quirks: Optional[QuirksLike] = None,
                  work_dir: Union[None, str, os.PathLike] = None,
                  **settings: Any) -> CLIPESPseudoLabeler:
    """A ``CLIPESPseudoLabeler`` in eval mode; arguments as :func:`build_tagger`."""
    return _build(CLIPESPseudoLabeler, clip, quirks, work_dir, settings)
