"""Tell a refused unsafe pickle apart from a damaged file.

``torch.load(weights_only=True)`` raises :class:`pickle.UnpicklingError` both
when a file stores Python objects it will not unpickle (which could run code)
and when the bytes are not a pickle at all. Only the first case deserves the
"it stores Python objects" explanation, and the user needs torch's sentence
naming the refused object, whole.
"""
import pickle
import re
from typing import Optional

__all__ = ['refused_global', 'error_sentence']

#: torch's sentence for a refused object: "Unsupported global: GLOBAL
#: builtins.open was not an allowed global by default." (torch >= 2.4), or
#: "Unsupported class builtins.open" / "Trying to instantiate unsupported
#: class X" (torch 2.1-2.3). A bare "Unsupported operand 248" (no full stop)
#: is what random bytes give: a damaged file.
_REFUSAL = re.compile(r'(Unsupported (?:global|operand)[^\n]*?\.)(?:\s|$)'
                      r'|((?:Trying to instantiate )?[Uu]nsupported class \S+)')


def refused_global(e: BaseException) -> Optional[str]:
    """torch's sentence naming what ``weights_only=True`` refused, if that is
    why ``e`` was raised; ``None`` for any other failure (corrupt bytes...)."""
    if not isinstance(e, pickle.UnpicklingError):
        return None
    match = _REFUSAL.search(str(e))
    return (match.group(1) or match.group(2)) if match else None


def error_sentence(e: BaseException) -> str:
    """The first non-empty line of ``e``'s message, uncut (its type if empty)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__
