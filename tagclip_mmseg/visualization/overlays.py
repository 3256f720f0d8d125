"""Pictures of what TagCLIP and CLIP-ES found in an image.

RGB uint8 arrays, with no file I/O (:mod:`.report` writes them). Text uses
matplotlib's DejaVu Sans when available.
"""
import functools
from typing import List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..utils.class_names import voc_palette

__all__ = [
    'IGNORE_INDEX', 'draw_tag_panel', 'overlay_heatmap', 'overlay_mask', 'mask_label_names',
    'default_palette'
]

#: Label value of pixels a mask leaves unassigned (CRF-uncertain, failed image).
IGNORE_INDEX = 255

_PANEL_BG = (0, 0, 0)
_TEXT = (255, 255, 255)
_MUTED = (190, 190, 190)


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    """A TrueType font of ``size`` pixels, or PIL's default bitmap font."""
    try:
        from matplotlib import font_manager  # optional dependency
        return ImageFont.truetype(font_manager.findfont('DejaVu Sans'), size)
    except Exception:  # noqa: BLE001  (no matplotlib, no font file, no FreeType)
        return ImageFont.load_default()


def _text_size(image_hw: Tuple[int, int]) -> int:
    """Font size that scales with the image: 1/20 of the shorter side."""
    return int(np.clip(min(image_hw) / 20, 11, 48))


def _check_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'expected an RGB uint8 image of shape (H, W, 3), got '
                         f'{image.dtype} {image.shape}')
    return image


def draw_tag_panel(image: np.ndarray,
                   tags: Sequence[str],
                   scores: Mapping[str, float],
                   max_others: int = 3,
                   title: Optional[str] = None) -> np.ndarray:
    """The image with a box listing its tags (and the best non-tags, muted).

    Args:
        image (np.ndarray): RGB uint8 (H, W, 3).
        tags (Sequence[str]): Predicted tags.
        scores (Mapping[str, float]): Score of every class.
        max_others (int): How many of the highest-scoring classes that are
            not tags to list after the tags, so that a near miss is visible.
        title (str, optional): A first line (e.g. ``'PIPELINE CHECK'``).

    Returns:
        np.ndarray: A new RGB uint8 image of the same size.
    """
    _check_rgb(image)
    others = sorted((c for c in scores if c not in set(tags)), key=lambda c: -scores[c])
    lines: List[Tuple[str, Tuple[int, int, int]]] = []
    if title:
        lines.append((title, (255, 80, 80)))
    lines += [(f'{t}  {scores.get(t, float("nan")):.3f}', _TEXT)
              for t in sorted(tags, key=lambda t: -scores.get(t, 0.))]
    if not tags:
        lines.append(('(no tags)', _TEXT))
    lines += [(f'{c}  {scores[c]:.3f}', _MUTED) for c in others[:max_others]]
    canvas = Image.fromarray(image).convert('RGBA')
    overlay = Image.new('RGBA', canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    font = _font(_text_size(image.shape[:2]))
    pad = max(4, getattr(font, 'size', 12) // 3)
    boxes = [draw.textbbox((0, 0), text, font=font) for text, _ in lines]
    line_h = max(b[3] - b[1] for b in boxes) + pad
    width = max(b[2] - b[0] for b in boxes) + 2 * pad
    height = line_h * len(lines) + pad
    draw.rectangle((0, 0, width, height), fill=_PANEL_BG + (170, ))
    for i, (text, colour) in enumerate(lines):
        draw.text((pad, pad // 2 + i * line_h), text, font=font, fill=colour + (255, ))
    return np.asarray(Image.alpha_composite(canvas, overlay).convert('RGB'))


def overlay_heatmap(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a class activation map over the image (jet: blue low, red high).

    Args:
        image (np.ndarray): RGB uint8 (H, W, 3).
        cam (np.ndarray): (H, W) map in [0, 1] (values outside are clipped);
            resized to the image when its size differs.
        alpha (float): Weight of the heat map.

    Returns:
        np.ndarray: RGB uint8 (H, W, 3).
    """
    _check_rgb(image)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f'expected a (H, W) CAM, got shape {cam.shape}')
    if cam.shape != image.shape[:2]:
        cam = cv2.resize(cam, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 1 - alpha, heat, alpha, 0)


def default_palette() -> np.ndarray:
    """(256, 3) uint8: VOC's colour map (0 black background, 255 cream ignore)."""
    return np.asarray(voc_palette(256), dtype=np.uint8)


def mask_label_names(class_names: Sequence[str], with_background: bool = True) -> dict:
    """Label value -> display name for a CLIP-ES mask over ``class_names``.

    0 is background and ``c + 1`` class ``c``, or the class index itself
    without a background channel.
    """
    offset = 1 if with_background else 0
    names = {i + offset: n for i, n in enumerate(class_names)}
    if with_background:
        names[0] = 'background'
    names[IGNORE_INDEX] = 'ignore'
    return names


def overlay_mask(image: np.ndarray,
                 mask: np.ndarray,
                 label_names: Mapping[int, str],
                 palette: Optional[np.ndarray] = None,
                 alpha: float = 0.5) -> np.ndarray:
    """Blend a label map over the image and add a legend strip below it.

    Background (0) pixels keep the photo unblended so the objects stand out.

    Args:
        image (np.ndarray): RGB uint8 (H, W, 3).
        mask (np.ndarray): (H, W) integer labels of the same size.
        label_names (Mapping[int, str]): Name of each label value; the legend
            lists the values present in ``mask`` in increasing order.
        palette (np.ndarray, optional): (N, 3) uint8 colours indexed by label;
            defaults to :func:`default_palette`.
        alpha (float): Weight of the colours.

    Returns:
        np.ndarray: RGB uint8 (H + legend height, W, 3).
    """
    _check_rgb(image)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f'mask shape {mask.shape} differs from the image size {image.shape[:2]}')
    palette = default_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    if mask.size and (mask.min() < 0 or mask.max() >= len(palette)):
        raise ValueError(f'mask values must be in [0, {len(palette) - 1}] for a palette of '
                         f'{len(palette)} colours, got [{mask.min()}, {mask.max()}]')
    colours = palette[mask]
    blended = (image * (1 - alpha) + colours * alpha).astype(np.uint8)
    if label_names.get(0) == 'background':
        blended = np.where((mask == 0)[..., None], image, blended)
    present = [int(v) for v in np.unique(mask)]
    return np.concatenate([blended, _legend(present, label_names, palette, image.shape[1])], axis=0)


def _legend(values: Sequence[int], label_names: Mapping[int, str], palette: np.ndarray,
            width: int) -> np.ndarray:
    """A white strip with a colour swatch and a name per label, wrapped to ``width``."""
    font = _font(max(11, min(22, width // 30)))
    probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    items = [(v, label_names.get(v, str(v))) for v in values]
    text_h = max([probe.textbbox((0, 0), n, font=font)[3] for _, n in items] + [10])
    pad, swatch = 6, text_h
    # Lay out left to right, wrapping when a row is full.
    positions, x, y = [], pad, pad
    for v, name in items:
        w = swatch + pad + probe.textbbox((0, 0), name, font=font)[2] + 2 * pad
        if x + w > width and x > pad:
            x, y = pad, y + text_h + pad
        positions.append((x, y, v, name))
        x += w
    strip = Image.new('RGB', (width, y + text_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for x, y, v, name in positions:
        draw.rectangle((x, y, x + swatch, y + swatch), fill=tuple(int(c) for c in palette[v]),
                       outline=(0, 0, 0))
        draw.text((x + swatch + pad, y), name, font=font, fill=(0, 0, 0))
    return np.asarray(strip)
