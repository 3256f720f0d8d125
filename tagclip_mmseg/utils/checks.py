"""The value checks shared by every model setting and every model output.

NaN compares false everywhere, so NaN scores would silently become "no tags";
models and writers refuse them with :func:`check_finite`.
"""
import math
import numbers
from typing import Optional, TypeVar

import numpy as np
import torch

__all__ = ['check_range', 'check_finite', 'NonFiniteError']

Number = TypeVar('Number', int, float)


def check_range(name: str, value: Optional[Number], low: Optional[float] = None,
                high: Optional[float] = None, *, low_open: bool = False,
                high_open: bool = False, integer: bool = False,
                allow_none: bool = False) -> Optional[Number]:
    """Return ``value`` if it lies in the interval, else raise.

    Args:
        name (str): The setting, as the user writes it (``'tag_ratio'``,
            ``'crf.confidence_thr'``).
        value (int | float, optional): The value to check.
        low (float, optional): Lower bound; ``None``: none.
        high (float, optional): Upper bound; ``None``: none.
        low_open (bool): Exclude ``low`` itself.
        high_open (bool): Exclude ``high`` itself.
        integer (bool): Require an ``int``.
        allow_none (bool): Accept ``None`` (a setting that can be switched off).

    Returns:
        The value, unchanged.

    Raises:
        ValueError: Naming the setting, the allowed interval and the value
            (also for NaN, inf outside the bounds and booleans).
    """
    if value is None and allow_none:
        return value
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and not (
        isinstance(value, float) and math.isnan(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        interval = '{}{}, {}{}'.format('(' if low_open or low is None else '[',
                                       '-inf' if low is None else _fmt(low),
                                       'inf' if high is None else _fmt(high),
                                       ')' if high_open or high is None else ']')
        what = 'an integer' if integer else 'a number'
        extra = ' or None' if allow_none else ''
        raise ValueError(f'{name} must be {what} in {interval}{extra}, got {value!r}')
    return value


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


class NonFiniteError(ValueError):
    """Scores or CAMs hold NaN or inf."""


def check_finite(values, what: str) -> None:
    """Refuse scores or CAMs that hold NaN or inf.

    Args:
        values (Tensor | np.ndarray): Scores (..., C) or maps; one
            device-to-host copy of a single flag when they are finite.
        what (str): What they are and whose, e.g. ``'TagCLIP scores'`` or
            ``'image 2007_000032: CAMs'``.

    Raises:
        NonFiniteError: Naming ``what``, where the first bad values are and
            the likely causes.
    """
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(values)
    values = torch.as_tensor(values).detach()
    if not values.is_floating_point() or bool(torch.isfinite(values).all()):
        return
    bad = (~torch.isfinite(values)).nonzero()
    where = [tuple(int(i) for i in idx) for idx in bad[:5].cpu()]
    where = [w[0] if len(w) == 1 else w for w in where]
    raise NonFiniteError(
        f'{what} hold non-finite values (NaN or inf) at {len(bad)} of {values.numel()} '
        f'entries, first at index {where}{" ..." if len(bad) > 5 else ""}; nothing is kept. '
        'Check the CLIP checkpoint (load_clip refuses non-finite weights) and, with '
        "clip=dict(dtype='fp16') or autocast, try fp32 (an fp16 overflow gives inf)")
