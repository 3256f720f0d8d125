"""A random-weight CLIP for checking offline that the pipeline runs end to end."""
from ..models.clip.random_clip import NARROW_CLIP_ARCH, random_clip

__all__ = ['PIPELINE_CHECK_ARCH', 'write_pipeline_check_checkpoint']

#: Architecture of the random CLIP (ViT-B/16's layout, narrow).
PIPELINE_CHECK_ARCH = NARROW_CLIP_ARCH


def write_pipeline_check_checkpoint(path: str, seed: int = 0) -> str:
    """Save a seeded random CLIP of :data:`PIPELINE_CHECK_ARCH` to ``path``.

    Returns:
        str: ``path``.
    """
    random_clip(seed, path, **PIPELINE_CHECK_ARCH)
    return path
