"""Writes the tagger's output files at the end of a test run.

A metric rather than a hook so that mmengine gathers the per-image records of
all ranks to rank 0, which writes each file once (records are small: a score
vector and a few indices per image).

Files (all written atomically, sorted by image id, byte-deterministic):

* ``out_file``: one line per image, ``"<img_id> idx idx ..."`` with the
  0-based foreground indices in ascending order, the format of TagCLIP's
  ``--save_file`` and of the split files (docs/method.md §4.6). An image without tags is
  a line with only its id. Ids are escaped as every label file's
  (``datasets.label_files.format_label_line``: ``IMG 0001`` is written
  ``IMG%200001``), so any file name reads back as it was.
* ``scores_file`` (optional): JSON lines ``{"img_id": ..., "scores": [...],
  "tags": [...]}``, scores rounded to ``score_decimals``. Non-finite scores
  (NaN, inf: broken weights or an overflow) are refused when they arrive,
  never written: they are not JSON, and their tags would mean nothing.
* ``skipped_file``: ``img_id<TAB>img_path<TAB>reason`` for every image that
  failed to load, and every image the dataset lists but left out
  (``metainfo['missing_images']``: file missing, a directory...); such
  images are not in the other files.

While the run goes on, each rank also appends every image it tags to a
journal (``tagclip_mmseg.resume.journal``: ``<out_file>.journal.rank<k>.jsonl``), so that a
killed run restarted with the same settings resumes where it stopped
(``SkipTagged``, armed by ``TagResumeHook``). Images that failed to load are
not journaled: they are retried, which is cheap and picks up a repaired file.
The journals are removed once the final files are written.

From construction to the final files, rank 0 holds ``<out_file>.lock``
(``utils.run_lock``): a second run into the same tags file stops before it
touches the journals, and a lock left by a killed run is taken over.
"""
import contextlib
import json
import os
import os.path as osp
import time
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.dist import get_rank, is_main_process
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger
from mmseg.registry import METRICS

from ..datasets.label_files import format_label_line
from ..datasets.utils import skipped_list_path
from ..utils.checks import check_finite
from ..utils.io import atomic_write_text, ensure_writable_dir
from ..utils.hashing import file_stamp
from ..utils.paths import safe_join
from ..utils.run_lock import RunLock
from ..resume.files import remove_stale_temp_files
from ..resume.journal import TagJournal, encode_scores, journal_path, journal_paths
from .sample_fields import get_field, image_id, load_error, missing_images
from .summary import format_summary

__all__ = ['TagFileWriter']


@METRICS.register_module()
class TagFileWriter(BaseMetric):
    """Write the tags file (and optional per-class scores) of a tagging run.

    Reads ``pred_label`` (tags, fg indices) and ``pred_score`` of each image;
    images whose metainfo has a ``load_error`` are listed in ``skipped_file``;
    images with ``precomputed`` (restored from a journal by ``SkipTagged``)
    are written like the others and counted as resumed.

    Args:
        out_file: The tags file.
        scores_file: Optional JSON-lines file of per-class scores.
        skipped_file: List of images that failed to load; defaults to
            ``<out_file without extension>.skipped.txt``.
        score_decimals: Decimals kept in ``scores_file``.
        fsync_interval_s: Longest time between two ``fsync`` calls of the
            journal (lines are flushed to the OS, which survives a killed
            process, at once; ``fsync`` guards against a power loss).
        collect_device: ``'cpu'`` or ``'gpu'``, for gathering across ranks.
        prefix: Key prefix, default ``'tags'``.

    Returned keys: ``num_images`` (tagged, resumed ones included),
    ``num_resumed`` and ``num_skipped``.
    """
    default_prefix: Optional[str] = 'tags'

    def __init__(self,
                 out_file: str,
                 scores_file: Optional[str] = None,
                 skipped_file: Optional[str] = None,
                 score_decimals: int = 6,
                 fsync_interval_s: float = 10.0,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.out_file = osp.abspath(out_file)
        self.scores_file = None if scores_file is None else osp.abspath(scores_file)
        self.skipped_file = osp.abspath(skipped_file or skipped_list_path(out_file))
        self.score_decimals = int(score_decimals)
        self.fsync_interval_s = float(fsync_interval_s)
        #: Identity of the run's settings for the journal header; set by
        #: ``TagResumeHook`` (``None``: journals are written but never resumed).
        self.fingerprint: Optional[str] = None
        self._journal: Optional[TagJournal] = None
        self._start: Optional[float] = None
        folders = {osp.dirname(p) for p in self._paths()}
        for folder in sorted(folders):  # fail now, not after hours of tagging
            ensure_writable_dir(folder)
        # One live run per output: refuse before touching files another run writes.
        self._lock = RunLock(self.out_file) if is_main_process() else None
        if self._lock is not None:
            self._lock.acquire()
            for folder in sorted(folders):
                remove_stale_temp_files(folder, extensions=(), names=[
                    osp.basename(p) for p in self._paths() if osp.dirname(p) == folder])

    def _paths(self) -> List[str]:
        return [p for p in (self.out_file, self.scores_file, self.skipped_file) if p]

    def set_fingerprint(self, fingerprint: Optional[str]) -> None:
        """Set the journal header's identity of the run (before the first image)."""
        if self._journal is not None:
            raise RuntimeError('set_fingerprint must be called before the first image')
        self.fingerprint = fingerprint

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Keep each image's id, tags and rounded scores; journal the new ones."""
        if self._start is None:  # the first batch: refuse bad ids before any work is kept
            self._start = time.perf_counter()
            missing_images(self.dataset_meta, osp.dirname(self.out_file))
        for sample in data_samples:
            img_id = image_id(sample)
            # Ids become paths downstream (pseudo labels): none may leave the folder.
            safe_join(osp.dirname(self.out_file), img_id)
            record = dict(img_id=img_id, img_path=get_field(sample, 'img_path'),
                          error=load_error(sample), resumed=bool(get_field(sample, 'precomputed')))
            if record['error'] is None:
                tags = get_field(sample, 'pred_label')
                if tags is None:
                    raise KeyError(f'image {record["img_id"]} has no pred_label (tags) to write')
                record['tags'] = sorted(int(t) for t in torch.as_tensor(tags).flatten().tolist())
                scores = get_field(sample, 'pred_score')
                if scores is not None:
                    check_finite(scores, f'image {record["img_id"]} ({record["img_path"]}): '
                                 'scores')
                if self.scores_file is not None:
                    if scores is None:
                        raise KeyError(f'image {record["img_id"]} has no pred_score for '
                                       'scores_file')
                    record['scores'] = [round(s, self.score_decimals) for s in
                                        torch.as_tensor(scores).flatten().double().tolist()]
                if scores is not None and not record['resumed']:
                    self._journal_record(record, sample, scores)
            self.results.append(record)

    def _journal_record(self, record: dict, sample, scores) -> None:
        """Append a freshly tagged image to this rank's journal."""
        if self._journal is None:
            self._journal = TagJournal(journal_path(self.out_file, get_rank()), self.fingerprint,
                                       self.fsync_interval_s)
        shape = get_field(sample, 'ori_shape')
        self._journal.append(dict(img_id=record['img_id'], img_path=record['img_path'],
                                  img_stamp=file_stamp(record['img_path']),
                                  ori_shape=None if shape is None else [int(x) for x in shape],
                                  tags=record['tags'], scores=encode_scores(scores)))

    def evaluate(self, size: int) -> dict:
        """Close this rank's journal, then gather and write as ``BaseMetric`` does."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        return super().evaluate(size)

    def compute_metrics(self, results: List[dict]) -> Dict[str, int]:
        """Sort by image id, write the files (rank 0), log one summary line."""
        logger = MMLogger.get_current_instance()
        elapsed = time.perf_counter() - self._start if self._start is not None else 0.0
        self._start = None
        by_id: Dict[str, dict] = {}
        left_out = [dict(img_id=m['img_id'], img_path=m['img_path'], error=m['reason'])
                    for m in missing_images(self.dataset_meta, osp.dirname(self.out_file))]
        for record in list(results) + left_out:
            if record['img_id'] in by_id:
                logger.warning(f'image id {record["img_id"]} occurs twice; keeping the first')
                continue
            by_id[record['img_id']] = record
        records = [by_id[k] for k in sorted(by_id)]
        tagged = [r for r in records if r['error'] is None]
        skipped = [r for r in records if r['error'] is not None]

        atomic_write_text(self.out_file, ''.join(
            format_label_line(r['img_id'], r['tags']) + '\n' for r in tagged))
        if self.scores_file is not None:
            atomic_write_text(self.scores_file, ''.join(
                json.dumps(dict(img_id=r['img_id'], scores=r['scores'], tags=r['tags']),
                           separators=(',', ':'), allow_nan=False) + '\n' for r in tagged))
        atomic_write_text(self.skipped_file, ''.join(
            f'{r["img_id"]}\t{r["img_path"]}\t{" ".join(str(r["error"]).split())}\n'
            for r in skipped))
        # Only now that the files hold every image are the journals obsolete;
        # a kill before this line resumes everything and writes the same files.
        for path in journal_paths(self.out_file):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        resumed = sum(r.get('resumed', False) for r in tagged)
        counts = {'tagged': len(tagged) - resumed, 'resumed': resumed, 'skipped': len(skipped)}
        if not resumed:
            del counts['resumed']
        logger.info(f'tags written to {self.out_file}: ' + format_summary(counts, elapsed))
        if skipped:
            logger.warning(f'{len(skipped)} images failed to load; see {self.skipped_file}')
        if self._lock is not None:
            self._lock.release()
        return dict(num_images=len(tagged), num_resumed=resumed, num_skipped=len(skipped))

