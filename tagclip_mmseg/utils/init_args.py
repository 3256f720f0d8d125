"""Constructor arguments of built objects, kept with their defaults filled in.

Resume fingerprints take all of them but an explicit few, so no new argument
can be forgotten.
"""
import functools
import inspect
from typing import Any, Callable, Dict, Optional

__all__ = ['RecordsInitArgs', 'init_args', 'init_parameters']


def init_parameters(builder: Callable) -> Dict[str, inspect.Parameter]:
    """Every named argument a class's constructor (or a function) accepts.

    A constructor that forwards ``**kwargs`` to its base accepts the base's
    arguments too, so they are followed up the MRO until a constructor
    without ``**kwargs``.
    """
    if not inspect.isclass(builder):
        return {n: p for n, p in inspect.signature(builder).parameters.items()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    params: Dict[str, inspect.Parameter] = {}
    for klass in builder.__mro__:
        init = vars(klass).get('__init__')
        if init is None or klass is object:
            continue
        signature = inspect.signature(init)
        for i, (name, p) in enumerate(signature.parameters.items()):
            if i > 0 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                params.setdefault(name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return params


def _bind(cls: type, args: tuple, kwargs: dict) -> Dict[str, Any]:
    """The arguments of one construction of ``cls``, defaults filled in."""
    params = init_parameters(cls)
    bound = {n: p.default for n, p in params.items() if p.default is not p.empty}
    positional = [n for n, p in inspect.signature(cls.__init__).parameters.items()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][1:]
    bound.update(zip(positional, args))
    bound.update(kwargs)
    return bound


class RecordsInitArgs:
    """Mixin: an instance keeps the arguments it was built with.

    Every subclass's ``__init__`` is wrapped; the outermost call (that of the
    instance's own class) stores its arguments, defaults included, for
    :func:`init_args`.
    """

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        init = vars(cls).get('__init__')
        if init is None or getattr(init, '_records_init_args', False):
            return

        @functools.wraps(init)
        def __init__(self, *args, **kw) -> None:
            init(self, *args, **kw)
            if type(self).__init__ is __init__:
                object.__setattr__(self, '_init_args', _bind(type(self), args, kw))

        __init__._records_init_args = True  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[misc]


def init_args(obj: Any) -> Optional[Dict[str, Any]]:
    """The arguments ``obj`` was built with (:class:`RecordsInitArgs`), else ``None``."""
    return getattr(obj, '_init_args', None) if isinstance(obj, RecordsInitArgs) else None
