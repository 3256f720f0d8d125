"""A random-weight CLIP for checking that the pipeline runs end to end.

No package ships CLIP weights, and offline machines cannot fetch them.
So that ``make demo`` still exercises loading, resizing, TagCLIP, CLIP-ES,
drawing and the HTML page on a fresh machine, the demo can run on a CLIP with
**random weights**. Its tags, scores, CAMs and masks are meaningless, and the
demo says so wherever it shows them.

The random model keeps the parts of ViT-B/16's *layout* that the methods
depend on: patch size 16 (token grids), 12 vision layers (the default
``avg_layers=(8, 9, 10)`` and ``caa_layers=range(4, 11)`` index into them) and
a 224 input resolution (CWR crop size, positional-embedding grid). It is much
*narrower* (width 128 instead of 768 for images; one 64-wide layer instead of
twelve 512-wide ones for text) because the demo must finish in seconds on two
CPU cores: the 45-word VOC vocabulary alone is 3 825 prompts of 77 tokens
through the text tower, which takes minutes at ViT-B/16's real size.
"""
from ..testing.random_clip import NARROW_CLIP_ARCH, random_clip

__all__ = ['PIPELINE_CHECK_ARCH', 'write_pipeline_check_checkpoint']

#: Architecture of the random CLIP: arguments of ``CLIP`` over its ViT-B/16
#: defaults (the narrow layout described above).
PIPELINE_CHECK_ARCH = NARROW_CLIP_ARCH


def write_pipeline_check_checkpoint(path: str, seed: int = 0) -> str:
    """Save a seeded random CLIP of :data:`PIPELINE_CHECK_ARCH` to ``path``.

    The same seed gives the same weights, so two pipeline-check runs give the
    same (meaningless) output.

    Returns:
        str: ``path``.
    """
    random_clip(seed, path, **PIPELINE_CHECK_ARCH)
    return path
