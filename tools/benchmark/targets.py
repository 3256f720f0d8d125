"""The acceptance targets of the benchmark, as one table.

Each figure that has a target names its row here; the verdict (PASS/MISS) is
computed from the row, never from a number written at the call site. The
figures and their history are in docs/performance.md, "The targets".
"""
from typing import Dict, NamedTuple

__all__ = ['Target', 'TARGETS', 'meets']


class Target(NamedTuple):
    """A bound on one figure: ``op`` is ``'<='`` (at most) or ``'>='`` (at least)."""
    op: str
    value: float


#: Target name -> bound. Ratios are to the plain forward of the same run
#: unless the name says otherwise.
TARGETS: Dict[str, Target] = {
    'tag': Target('<=', 1.5),  # fast tagging, working size
    'tag_large': Target('<=', 2.5),  # fast tagging, large size
    'cam_two_tags': Target('<=', 1.3),
    'cam_per_tag': Target('<=', 0.1),  # marginal cost of one more tag
    'memory_gib': Target('<=', 2.8),  # added by one large image, fast tagging
    'cache_hit_s': Target('<=', 1.0),  # text embeddings on a second launch
    'batch_per_image': Target('<=', 1.05),  # s/img at batch b over batch 1 (5% noise)
    'crf_scaling': Target('>=', 1.8),  # CRF images/s, 2 workers over 1
    'gpu_tag_speedup': Target('>=', 20.),  # GPU: fast over faithful tagging, images/s
    'gpu_cam_speedup': Target('>=', 10.),  # GPU: fast over faithful CAMs, images/s
}


def meets(name: str, value: float) -> bool:
    """Whether ``value`` meets the target ``name`` of :data:`TARGETS`.

    Raises:
        KeyError: ``name`` is not a row of the table.
    """
    if name not in TARGETS:
        raise KeyError(f'no benchmark target {name!r}; the table has {sorted(TARGETS)}')
    target = TARGETS[name]
    return value >= target.value if target.op == '>=' else value <= target.value
