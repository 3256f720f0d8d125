"""Journal of a tagging run: each image's result on disk as soon as it exists.

The tags files are written once, at the end of a run (they are sorted and
gathered from all ranks), so a tagging run killed after hours would lose all
its work. Each rank therefore appends every tagged image to its own journal
``<out_file>.journal.rank<k>.jsonl`` while it runs; a restarted run reads the
journals of every rank (any world size) and reuses those images instead of
computing them again (``SkipTagged``). The writer removes the journals once
the final files are written.

Format: JSON lines. The first line is a header naming the format and a
fingerprint of everything that determines the results (model, vocabulary,
weights, image pipeline); a journal whose header differs belongs to another
run and is ignored, and overwritten by the next writer of that rank. Every
other line is one image: ``img_id``, ``img_path``, ``img_stamp`` (the image
file's ``[size, mtime_ns]`` when it was tagged: an image edited since is
tagged again), ``ori_shape``, ``tags`` (foreground indices) and ``scores``,
the exact score vector as ``[numpy dtype string, base64 of its little-endian bytes]``, compact and
lossless, so that a resumed image scores exactly as a computed one in the
metrics and the files.

Crash safety: each line is flushed to the operating system as it is written,
which is all a killed process needs (its data survive it in the page cache);
``fsync`` runs every ``fsync_interval_s`` and on close, bounding what a power
loss can take to the last few seconds without paying a disk flush per image.
A kill in the middle of a line leaves a torn last line, and a power loss may
leave zeros; readers skip any line that is not a complete record.
"""
import base64
import glob
import json
import os
import os.path as osp
import re
import time
from typing import IO, Any, Dict, List, Optional

import numpy as np
import torch
from mmengine.logging import print_log

__all__ = [
    'JOURNAL_FORMAT', 'journal_path', 'journal_paths', 'encode_scores', 'decode_scores',
    'TagJournal', 'read_journals'
]

#: Header ``format`` value; bump it when the record layout changes.
JOURNAL_FORMAT = 'tagclip_mmseg/tag-journal/2'
#: Score dtypes kept as they are; anything else is stored as float64.
_EXACT_DTYPES = ('<f2', '<f4', '<f8')


def journal_path(out_file: str, rank: int) -> str:
    """The journal of ``rank`` for the tags file ``out_file``."""
    return f'{out_file}.journal.rank{int(rank)}.jsonl'


def journal_paths(out_file: str) -> List[str]:
    """Existing journals of ``out_file``, of every rank, sorted by rank."""
    pattern = re.compile(re.escape(osp.basename(out_file)) + r'\.journal\.rank(\d+)\.jsonl$')
    found = []
    for path in glob.glob(glob.escape(out_file) + '.journal.rank*.jsonl'):
        match = pattern.match(osp.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def encode_scores(scores: Any) -> List[str]:
    """``[dtype, base64]`` of a score vector, exact for float16/32/64."""
    array = torch.as_tensor(scores).detach().cpu().flatten().numpy()
    dtype = array.dtype.newbyteorder('<')
    if dtype.str not in _EXACT_DTYPES:
        dtype = np.dtype('<f8')
    return [dtype.str, base64.b64encode(array.astype(dtype).tobytes()).decode('ascii')]


def decode_scores(encoded: List[str]) -> torch.Tensor:
    """Inverse of :func:`encode_scores`, in the dtype it was written with.

    Raises:
        ValueError: For anything that is not an encoded score vector.
    """
    dtype, data = encoded
    if dtype not in _EXACT_DTYPES:
        raise ValueError(f'unknown score dtype {dtype!r}')
    array = np.frombuffer(base64.b64decode(data, validate=True), dtype=np.dtype(dtype))
    return torch.from_numpy(array.astype(array.dtype.newbyteorder('=')))


def _header(fingerprint: Optional[str]) -> dict:
    return {'format': JOURNAL_FORMAT, 'fingerprint': fingerprint}


def _read_header(path: str) -> Optional[dict]:
    """The parsed first line of a journal, or ``None`` if it has none."""
    try:
        with open(path, 'rb') as f:
            header = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


class TagJournal:
    """Append-only journal of one rank (see the module docstring).

    The file is opened on the first :meth:`append`: an existing journal with
    the same header is continued (a previous run of this rank was killed), any
    other one is replaced.

    Args:
        path: The journal file (:func:`journal_path`).
        fingerprint: Identity of the run's settings, written in the header.
        fsync_interval_s: Longest time between two ``fsync`` calls.
    """

    def __init__(self, path: str, fingerprint: Optional[str],
                 fsync_interval_s: float = 10.0) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.fsync_interval_s = float(fsync_interval_s)
        self._file: Optional[IO[str]] = None
        self._last_sync = 0.0

    def _open(self) -> IO[str]:
        header = _header(self.fingerprint)
        if osp.isfile(self.path) and _read_header(self.path) == header:
            with open(self.path, 'rb') as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b'\n'
            f = open(self.path, 'a', encoding='utf-8')
            if torn:  # a line cut off by a kill: keep it out of the next record
                f.write('\n')
        else:
            f = open(self.path, 'w', encoding='utf-8')
            f.write(json.dumps(header, separators=(',', ':')) + '\n')
        self._sync(f)
        return f

    def _sync(self, f: IO[str]) -> None:
        f.flush()
        os.fsync(f.fileno())
        self._last_sync = time.monotonic()

    def append(self, record: dict) -> None:
        """Write one image's record and hand it to the operating system."""
        if self._file is None:
            self._file = self._open()
        self._file.write(json.dumps(record, separators=(',', ':')) + '\n')
        if time.monotonic() - self._last_sync >= self.fsync_interval_s:
            self._sync(self._file)
        else:
            self._file.flush()

    def close(self) -> None:
        """Flush, fsync and close the file (a no-op if nothing was written)."""
        if self._file is not None:
            self._sync(self._file)
            self._file.close()
            self._file = None


def _valid_record(record: Any) -> bool:
    """Whether a parsed line has every field a resumed image needs."""
    if not isinstance(record, dict) or not isinstance(record.get('img_id'), str):
        return False
    try:
        decode_scores(record['scores'])
        return all(isinstance(t, int) for t in record['tags'])
    except (KeyError, TypeError, ValueError):
        return False


def read_journals(out_file: str, fingerprint: Optional[str]) -> Dict[str, dict]:
    """Every complete record of the journals of ``out_file`` with this header.

    Journals of every rank are merged (a run may resume with another number of
    processes); journals of another fingerprint are ignored and logged, and
    so are lines that are not complete records (cut off by a kill).

    Returns:
        ``img_id`` -> record (see the module docstring); of two records of
        one image (tagged again after an edit), the later one.
    """
    expected = _header(fingerprint)
    records: Dict[str, dict] = {}
    for path in journal_paths(out_file):
        if _read_header(path) != expected:
            print_log(f'ignoring tagging journal {path}: it was written by a run with other '
                      'settings (model, vocabulary, weights or pipeline)', logger='current',
                      level=30)
            continue
        torn = 0
        with open(path, 'rb') as f:
            f.readline()
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if _valid_record(record):
                    records[record['img_id']] = record
                elif line.strip():
                    torn += 1
        if torn:
            print_log(f'{path}: skipped {torn} incomplete lines (cut off when a run was '
                      'killed); those images are tagged again', logger='current')
    return records
