"""Token grids of images and grouping by grid, shared by datasets and models."""
import math
from typing import Dict, Hashable, Iterable, List, Optional, Tuple

__all__ = ['check_patch_args', 'patch_grid', 'group_indices']


def check_patch_args(patch_size: int, max_tokens: Optional[int]) -> None:
    """Refuse a patch size or token budget that is not a positive integer."""
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f'patch_size must be a positive integer, got {patch_size!r}')
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f'max_tokens must be None or a positive integer, got {max_tokens!r}')


def patch_grid(height: int, width: int, patch_size: int = 16,
               max_tokens: Optional[int] = None) -> Tuple[int, int]:
    """Token grid (rows, cols) of an image of ``height`` x ``width`` pixels.

    ``ceil(H / p) x ceil(W / p)``; over ``max_tokens`` the image is scaled down
    with its aspect ratio kept, each side at least one patch (docs/method.md,
    "Input size and positional-embedding resampling").

    Args:
        height (int): Image height in pixels (>= 1).
        width (int): Image width in pixels (>= 1).
        patch_size (int): ViT patch size. Defaults to 16.
        max_tokens (int, optional): Token budget; None means no limit.

    Returns:
        tuple[int, int]: (rows, cols) of patches.
    """
    check_patch_args(patch_size, max_tokens)
    if height < 1 or width < 1:
        raise ValueError(f'image size must be at least 1x1, got {height}x{width}')
    rows, cols = math.ceil(height / patch_size), math.ceil(width / patch_size)
    if max_tokens is None or rows * cols <= max_tokens:
        return rows, cols
    scale = math.sqrt(max_tokens * patch_size * patch_size / (height * width))
    rows = max(1, math.floor(height * scale / patch_size))
    cols = max(1, math.floor(width * scale / patch_size))
    if rows * cols > max_tokens:  # one side was clamped to a single patch
        if rows == 1:
            cols = max_tokens
        else:
            rows = max_tokens
    while rows * cols > max_tokens:  # guard against floating-point ties
        if rows >= cols:
            rows -= 1
        else:
            cols -= 1
    return rows, cols


def group_indices(keys: Iterable[Hashable]) -> Dict[Hashable, List[int]]:
    """Positions of equal keys, groups in order of first appearance.

    Images batch together only when their token grids are equal, since padding
    would change the results.
    """
    groups: Dict[Hashable, List[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return groups
