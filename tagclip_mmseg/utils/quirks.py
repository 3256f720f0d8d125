"""One switch for the reference implementation's quirks (docs/modes.md).

Every model, the CRF and the tagging metric take ``quirks=``: a preset name
(``'reference'`` or ``'fixed'``), a dict of fields or a :class:`Quirks`
(docs/method.md, "Reference quirks").
"""
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Tuple, Union

__all__ = ['Quirks', 'QuirksLike', 'QUIRK_PRESETS', 'resolve_quirks']


@dataclass(frozen=True)
class Quirks:
    """Which quirks of the reference implementation to reproduce.

    ``True`` (every field's default) reproduces the reference; ``False`` fixes
    it. docs/modes.md, "The fields" describes each.
    """

    #: Tagger: a degenerate CWR box stops CWR for the image's later candidates.
    cwr_early_exit: bool = True
    #: DMAR, CWR, CAA: box right/bottom ends clamped to size - 1.
    box_clamp: bool = True
    #: CRF: bilateral term sees BGR minus the Caffe mean, wrapped to uint8.
    crf_reference_image: bool = True
    #: TaggingMetric: classes without positives count as 0 in class means.
    empty_class_zero: bool = True
    #: Tagger, labeler: a resampled positional embedding is rounded to fp16.
    pos_embed_fp16: bool = True
    #: Labeler: upsampled CAMs are rounded to fp16 before the argmax.
    cam_fp16: bool = True
    #: Labeler: each Grad-CAM is rescaled ``(x - min) / (max + eps)`` twice.
    grad_cam_double_norm: bool = True

    @classmethod
    def reference(cls) -> 'Quirks':
        """Every quirk reproduced: the published numbers."""
        return cls()

    @classmethod
    def fixed(cls) -> 'Quirks':
        """Every quirk fixed."""
        return cls(**{name: False for name in cls.field_names()})

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        """The quirk fields, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def __post_init__(self) -> None:
        for name in self.field_names():
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f'Quirks.{name} must be True or False, got {value!r}')


#: What ``quirks=`` accepts: a preset name, a dict of fields, or a Quirks.
QuirksLike = Union[str, Mapping[str, Any], Quirks]

#: Preset names accepted by :func:`resolve_quirks`.
QUIRK_PRESETS = ('reference', 'fixed')


def _preset(name: Any) -> Quirks:
    if not isinstance(name, str) or name not in QUIRK_PRESETS:
        raise ValueError(f'unknown quirks preset {name!r}; choose one of {QUIRK_PRESETS}, '
                         f'a dict of fields {Quirks.field_names()} or a Quirks')
    return getattr(Quirks, name)()


def resolve_quirks(quirks: QuirksLike) -> Quirks:
    """A :class:`Quirks` from a preset name, a dict or a Quirks.

    A dict overrides the ``'reference'`` preset field by field, or the preset
    named by its ``preset`` key, e.g. ``dict(preset='fixed', box_clamp=True)``.

    Raises:
        ValueError: For an unknown preset or field, or a non-boolean value; the
            message lists the valid choices.
    """
    if isinstance(quirks, Quirks):
        return quirks
    if isinstance(quirks, str):
        return _preset(quirks)
    if isinstance(quirks, Mapping):
        fields = dict(quirks)
        base = _preset(fields.pop('preset', 'reference'))
        unknown = sorted(set(fields) - set(Quirks.field_names()))
        if unknown:
            raise ValueError(f'unknown quirks fields {unknown}; valid fields are '
                             f"{Quirks.field_names()} and 'preset' (one of {QUIRK_PRESETS})")
        return dataclasses.replace(base, **fields)
    raise ValueError(f'quirks must be a preset name {QUIRK_PRESETS}, a dict of fields '
                     f'{Quirks.field_names()} or a Quirks, got {quirks!r}')
