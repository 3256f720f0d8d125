"""Outputs of an earlier run read back; temporaries of a killed one removed.

Also the record of which image version each mask came from (:class:`SourceLog`);
see docs/resume.md, "Pseudo-label folders".
"""
import glob
import json
import os
import os.path as osp
import re
import time
from typing import IO, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
from mmengine.logging import print_log
from PIL import Image

from ..utils.hashing import file_stamp

__all__ = [
    'PNG_TRAILER', 'read_label_png', 'read_cam_file', 'remove_stale_temp_files', 'SourceLog',
    'read_sources', 'sources_path'
]

#: The last 12 bytes of every complete PNG: an empty IEND chunk and its CRC.
PNG_TRAILER = b'\x00\x00\x00\x00IEND\xaeB`\x82'
#: Characters and length of the random part of ``tempfile.mkstemp`` names.
_MKSTEMP_RANDOM = r'[a-z0-9_]{8}'


def read_label_png(path: str) -> Optional[np.ndarray]:
    """Read an index PNG written by the pseudo-label writer, if it is complete.

    Returns:
        The ``(H, W)`` uint8 label array, or ``None`` (logged) when the file
        is missing, truncated, undecodable or not an index image.
    """
    if not osp.isfile(path):
        return None
    try:
        with open(path, 'rb') as f:
            f.seek(max(osp.getsize(path) - len(PNG_TRAILER), 0))
            if f.read() != PNG_TRAILER:  # also catches Pillow's LOAD_TRUNCATED_IMAGES
                raise OSError('PNG has no IEND trailer (truncated)')
        with Image.open(path) as img:
            img.load()
            if img.mode not in ('P', 'L'):
                raise OSError(f'mode {img.mode!r} is not an index image (P or L)')
            return np.asarray(img, dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError) as e:
        print_log(f'existing pseudo label {path} is unreadable ({e}); it will be recomputed',
                  logger='current', level=30)
        return None


def read_cam_file(path: str) -> Optional[Dict[str, np.ndarray]]:
    """Load a CAM ``.npz`` (``keys``, ``attn_highres``); ``None`` if missing or damaged."""
    if not osp.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError) as e:
        print_log(f'existing CAM file {path} is unreadable ({e}); it will be recomputed',
                  logger='current', level=30)
        return None


def remove_stale_temp_files(folder: str,
                            extensions: Sequence[str] = ('.png', '.npz', '.json', '.txt'),
                            names: Sequence[str] = (),
                            min_age_s: float = 60.0) -> List[str]:
    """Delete atomic-write temporaries that a killed run left in ``folder``.

    Only ``.<file name>.<8 mkstemp chars>.tmp`` names whose file name ends with
    one of ``extensions`` or is one of ``names``, older than ``min_age_s`` (a
    young one may belong to another rank of this run).

    Args:
        folder: The output folder.
        extensions: File name endings whose temporaries are removed.
        names: Exact file names whose temporaries are removed.
        min_age_s: Minimum age of a removed temporary.

    Returns:
        The removed paths.
    """
    targets = [rf'.+{re.escape(e)}' for e in extensions] + [re.escape(n) for n in names]
    if not targets:
        return []
    pattern = re.compile(rf'^\.(?:{"|".join(targets)})\.{_MKSTEMP_RANDOM}\.tmp$')
    removed = []
    if not osp.isdir(folder):
        return removed
    cutoff = time.time() - min_age_s
    with os.scandir(folder) as entries:
        for entry in entries:
            if not (pattern.match(entry.name) and entry.is_file(follow_symlinks=False)):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed.append(entry.path)
            except FileNotFoundError:  # another rank removed it first
                pass
    if removed:
        print_log(f'removed {len(removed)} stale temporary files from {folder} '
                  '(left by an interrupted run)', logger='current')
    return removed


def sources_path(out_dir: str, rank: int) -> str:
    """The record of ``rank`` of which image version each mask of ``out_dir`` came from."""
    return osp.join(out_dir, f'.sources.rank{int(rank)}.jsonl')


class SourceLog:
    """Append-only record of one rank: each written mask and the image it came from.

    Args:
        path: The file (:func:`sources_path`).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: Optional[IO[str]] = None

    def append(self, img_id: str, img_path: Optional[str], png_sha256: str) -> None:
        """Record that the PNG ``png_sha256``, about to be written, comes from ``img_path``."""
        if self._file is None:
            self._file = open(self.path, 'a', encoding='utf-8')
            self._file.write('\n')  # a line torn by a kill stays apart from the next one
        self._file.write(json.dumps(dict(img_id=img_id, image=file_stamp(img_path),
                                         png=png_sha256), separators=(',', ':')) + '\n')
        self._file.flush()

    def close(self) -> None:
        """Flush, fsync and close the file (a no-op if nothing was written)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def read_sources(out_dir: str) -> Dict[str, Set[Tuple]]:
    """``img_id`` -> every recorded ``(image stamp, PNG SHA-256)`` of ``out_dir``."""
    sources: Dict[str, Set[Tuple]] = {}
    for path in glob.glob(osp.join(glob.escape(out_dir), '.sources.rank*.jsonl')):
        with open(path, 'rb') as f:
            for line in f:
                try:
                    record = json.loads(line)
                    key = (_stamp_key(record['image']), str(record['png']))
                    sources.setdefault(str(record['img_id']), set()).add(key)
                except (ValueError, KeyError, TypeError):
                    continue
    return sources


def _stamp_key(stamp: Optional[List[int]]) -> Optional[Tuple[int, ...]]:
    return None if stamp is None else tuple(int(x) for x in stamp)
