"""Write the pictures of a prediction to disk and an ``index.html`` over them.

The page has relative links; every name is HTML-escaped and every link
URL-quoted.
"""
import html
import os
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote

import cv2
import numpy as np

from ..utils.io import atomic_write_bytes, atomic_write_text
from ..utils.paths import safe_join
from .overlays import draw_tag_panel, overlay_heatmap, overlay_mask

__all__ = [
    'ReportEntry', 'safe_file_stem', 'unique_stems', 'write_rgb_image', 'save_result_images',
    'write_index_html'
]

_UNSAFE = re.compile(r'[^A-Za-z0-9._-]+')
_JPEG_QUALITY = 90


@dataclass
class ReportEntry:
    """One image of the report.

    Attributes:
        name (str): Display name (the file name, or ``array 3``).
        source (str, optional): Where the image came from (its path).
        tags (list[str]): Predicted tags.
        scores (dict[str, float]): Score of every class.
        images (list[tuple[str, str]]): (caption, path relative to the page)
            of each picture, shown in this order.
        error (str, optional): Why the image could not be processed.
    """
    name: str
    source: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    scores: Dict[str, float] = field(default_factory=dict)
    images: List[Tuple[str, str]] = field(default_factory=list)
    error: Optional[str] = None


def safe_file_stem(name: str, max_len: int = 60) -> str:
    """``name`` reduced to characters that are safe in file names and URLs."""
    stem = _UNSAFE.sub('_', name).strip('._') or 'item'
    return stem[:max_len]


def unique_stems(names: Sequence[str]) -> List[str]:
    """Safe, distinct stems for ``names`` (``cat``, ``cat-2``, ... on clashes).

    Two inputs ``a/cat.jpg`` and ``b/cat.png`` must not write into the same
    output folder, and ``cat.jpg`` must not overwrite ``cat.png``'s pictures.
    """
    used = set()
    out = []
    for name in names:
        stem = candidate = safe_file_stem(name)
        n = 1
        while candidate.lower() in used:  # lower(): case-insensitive file systems
            n += 1
            candidate = f'{stem}-{n}'
        used.add(candidate.lower())
        out.append(candidate)
    return out


def write_rgb_image(path: str, image: np.ndarray) -> None:
    """Encode an RGB uint8 image (format from the extension) and write it atomically."""
    ext = osp.splitext(path)[1].lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY] if ext in ('.jpg', '.jpeg') else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f'cannot encode an image as {ext!r} for {path!r}')
    atomic_write_bytes(path, buf.tobytes())


def save_result_images(out_dir: str,
                       stem: str,
                       image: np.ndarray,
                       result: Mapping,
                       label_names: Optional[Mapping[int, str]] = None,
                       title: Optional[str] = None) -> List[Tuple[str, str]]:
    """Draw and write the pictures of one prediction under ``out_dir/stem/``.

    Writes ``tags.jpg`` (tags and scores on the image), ``mask.jpg`` (mask
    overlay with legend, when ``result`` has ``mask``) and one
    ``cam_<k>_<class>.jpg`` heat map per tag (when it has ``cams``).

    Args:
        out_dir (str): Output folder (the page's folder).
        stem (str): Sub-folder of this image, from :func:`unique_stems`.
        image (np.ndarray): The original RGB uint8 image.
        result (Mapping): A :class:`~tagclip_mmseg.apis.TagCLIPInferencer`
            result (``tags``, ``scores``, optional ``cams`` and ``mask``).
        label_names (Mapping[int, str], optional): Mask value -> name, needed
            with ``mask``.
        title (str, optional): First line of the tag panel.

    Returns:
        list[tuple[str, str]]: (caption, path relative to ``out_dir``).
    """
    folder = safe_join(out_dir, stem)
    os.makedirs(folder, exist_ok=True)
    tags, scores = list(result['tags']), dict(result['scores'])
    written = []

    def write(name: str, caption: str, picture: np.ndarray) -> None:
        write_rgb_image(osp.join(folder, name), picture)
        written.append((caption, f'{stem}/{name}'))

    write('tags.jpg', 'tags and scores', draw_tag_panel(image, tags, scores, title=title))
    if result.get('mask') is not None:
        if label_names is None:
            raise ValueError('label_names is required to draw a mask legend')
        write('mask.jpg', 'pseudo mask', overlay_mask(image, result['mask'], label_names))
    cams = result.get('cams')
    if cams is not None:
        for k, (tag, cam) in enumerate(zip(tags, cams)):
            write(f'cam_{k}_{safe_file_stem(tag, 40)}.jpg', f'CAM: {tag} ({scores[tag]:.3f})',
                  overlay_heatmap(image, cam))
    return written


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.banner { border: 3px solid #c00; background: #fee; padding: 0.8em 1em; margin-bottom: 1em; }
.banner h2 { margin: 0 0 0.3em 0; color: #c00; }
.meta { color: #555; font-size: 0.9em; }
section { border-top: 1px solid #ccc; padding: 0.8em 0; }
.row { display: flex; flex-wrap: wrap; gap: 0.8em; align-items: flex-start; }
figure { margin: 0; max-width: 360px; }
figure img { max-width: 360px; max-height: 360px; display: block; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { padding: 0.1em 0.6em; text-align: left; }
tr.tag td { font-weight: bold; }
.error { color: #c00; }
"""


def _url(rel_path: str) -> str:
    return quote(rel_path.replace(os.sep, '/'))


def _entry_html(entry: ReportEntry, top_k: int) -> str:
    e = html.escape
    parts = [f'<section>\n<h2>{e(entry.name)}</h2>']
    if entry.source:
        parts.append(f'<p class="meta">{e(entry.source)}</p>')
    if entry.error:
        parts.append(f'<p class="error">Not processed: {e(entry.error)}</p>\n</section>')
        return '\n'.join(parts)
    tags = ', '.join(e(t) for t in entry.tags) or '(none)'
    parts.append(f'<p>Tags: <strong>{tags}</strong></p>')
    parts.append('<div class="row">')
    for caption, rel in entry.images:
        parts.append(f'<figure><a href="{e(_url(rel))}"><img src="{e(_url(rel))}" '
                     f'alt="{e(entry.name)}: {e(caption)}" loading="lazy"></a>'
                     f'<figcaption>{e(caption)}</figcaption></figure>')
    ranked = sorted(entry.scores.items(), key=lambda kv: -kv[1])[:top_k]
    tag_row = '<tr class="tag">'
    rows = ''.join(f'{tag_row if c in entry.tags else "<tr>"}<td>{e(c)}</td><td>{s:.3f}</td></tr>'
                   for c, s in ranked)
    parts.append(f'<table><caption>top {len(ranked)} scores</caption>'
                 f'<thead><tr><th>class</th><th>score</th></tr></thead><tbody>{rows}</tbody>'
                 '</table>')
    parts.append('</div>\n</section>')
    return '\n'.join(parts)


def write_index_html(path: str,
                     entries: Sequence[ReportEntry],
                     title: str = 'TagCLIP results',
                     banner: Optional[Tuple[str, Sequence[str]]] = None,
                     notes: Sequence[str] = (),
                     top_k: int = 10) -> None:
    """Write a static HTML5 page showing every entry's pictures side by side.

    Args:
        path (str): The page (``.../index.html``); picture paths in
            ``entries`` are relative to its folder.
        entries (Sequence[ReportEntry]): One per image, in display order.
        title (str): Page title and heading.
        banner (tuple[str, Sequence[str]], optional): A heading and
            paragraphs shown in a red box at the top (e.g. the pipeline-check
            warning).
        notes (Sequence[str]): Lines shown under the heading (run details).
        top_k (int): Scores listed per image.
    """
    e = html.escape
    body = [f'<h1>{e(title)}</h1>']
    if banner is not None:
        heading, paragraphs = banner
        body.append('<div class="banner" role="alert">'
                    f'<h2>{e(heading)}</h2>' + ''.join(f'<p>{e(p)}</p>' for p in paragraphs) +
                    '</div>')
    body += [f'<p class="meta">{e(n)}</p>' for n in notes]
    body += [_entry_html(entry, top_k) for entry in entries]
    page = ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<title>{e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n' +
            '\n'.join(body) + '\n</body>\n</html>\n')
    atomic_write_text(path, page)
