"""Writes the tagger's output files (tags, scores, skipped list) at the end of a run.

Rank 0 writes each file once, atomically, sorted by image id. Each rank also
journals every image it tags (``records.journal``) so a killed run resumes;
the journals are removed once the files are written. File formats:
docs/resume.md, "The tagging journal" and README.md, "Files and images between
the stages".
"""
import contextlib
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.dist import get_rank
from mmengine.logging import MMLogger
from mmseg.registry import METRICS

from ..datasets.label_files import format_label_line
from ..datasets.utils import skipped_list_path
from ..records import (TagJournal, encode_scores, get_field, image_id, journal_path, journal_paths,
                       load_error, remove_stale_temp_files)
from ..utils.checks import check_finite
from ..utils.hashing import file_stamp
from ..utils.io import atomic_write_text
from ..utils.paths import safe_join
from .output_writer import OutputWriter
from .summary import format_summary

__all__ = ['TagFileWriter']


@METRICS.register_module()
class TagFileWriter(OutputWriter):
    """Write the tags file (and optional per-class scores) of a tagging run.

    Reads each image's ``pred_label`` and ``pred_score``; images with a
    ``load_error`` go to ``skipped_file``, ``precomputed`` ones count as resumed.

    Args:
        out_file: The tags file.
        scores_file: Optional JSON-lines file of per-class scores.
        skipped_file: List of images that failed to load; defaults to
            ``<out_file without extension>.skipped.txt``.
        score_decimals: Decimals kept in ``scores_file``.
        fsync_interval_s: Longest time between two ``fsync`` calls of the
            journal (each line is flushed to the OS at once).
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
        self.out_file = osp.abspath(out_file)
        super().__init__(self.out_file, osp.dirname(self.out_file), collect_device, prefix)
        self.scores_file = None if scores_file is None else osp.abspath(scores_file)
        self.skipped_file = osp.abspath(skipped_file or skipped_list_path(out_file))
        self.score_decimals = int(score_decimals)
        self.fsync_interval_s = float(fsync_interval_s)
        #: Identity of the run's settings for the journal header; set by
        #: ``TagResumeHook`` (``None``: journals are written but never resumed).
        self.fingerprint: Optional[str] = None
        self._journal: Optional[TagJournal] = None

    def _paths(self) -> List[str]:
        return [p for p in (self.out_file, self.scores_file, self.skipped_file) if p]

    def output_folders(self) -> List[str]:
        """The folders of the tags, scores and skipped files."""
        return [osp.dirname(p) for p in self._paths()]

    def remove_temp_files(self) -> None:
        """Remove stale temporaries of this writer's files."""
        for folder in sorted(set(self.output_folders())):
            remove_stale_temp_files(folder, extensions=(), names=[
                osp.basename(p) for p in self._paths() if osp.dirname(p) == folder])

    def set_fingerprint(self, fingerprint: Optional[str]) -> None:
        """Set the journal header's identity of the run (before the first image)."""
        if self._journal is not None:
            raise RuntimeError('set_fingerprint must be called before the first image')
        self.fingerprint = fingerprint

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Keep each image's id, tags and rounded scores; journal the new ones."""
        self.start_batch()
        for sample in data_samples:
            img_id = image_id(sample)
            # Ids become paths downstream (pseudo labels): none may leave the folder.
            safe_join(self.id_folder, img_id)
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
        elapsed = self.stop_timer()
        by_id: Dict[str, dict] = {}
        left_out = [dict(img_id=m['img_id'], img_path=m['img_path'], error=m['reason'])
                    for m in self.left_out()]
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
        # Only now are the journals obsolete.
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
        return dict(num_images=len(tagged), num_resumed=resumed, num_skipped=len(skipped))
