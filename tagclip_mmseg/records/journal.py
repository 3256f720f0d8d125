"""Journal of a tagging run: each tagged image on disk as soon as it exists.

Each rank appends to ``<out_file>.journal.rank<k>.jsonl``; a restarted run with
the same fingerprint reuses the records (``SkipTagged``). Format and crash
safety: docs/resume.md, "The tagging journal".
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
    """Append-only journal of one rank.

    Opened on the first :meth:`append`: a journal with the same header is
    continued, any other one replaced.

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
    """Every complete record of the journals of ``out_file`` (any rank) with this header.

    Journals of another fingerprint and torn lines are skipped and logged.

    Returns:
        ``img_id`` -> record; of two records of one image, the later one.
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
