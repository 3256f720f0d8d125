"""Dataset transforms that short-cut images a killed run already finished.

A finished image gets ``precomputed=True``, its output (``pred_seg_map`` or
``pred_record``) and a tiny placeholder ``img``; ``ResumableTestLoop`` keeps it
away from the model. See docs/resume.md.
"""
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.logging import print_log
from mmseg.registry import TRANSFORMS

from ..datasets.image_io import DEFAULT_MAX_PIXELS, ImageLoadError, read_image_size
from ..records import (decode_scores, image_id, read_cam_file, read_journals, read_label_png,
                       read_sources)
from ..utils.hashing import file_sha256, file_stamp
from ..utils.init_args import RecordsInitArgs
from ..utils.paths import safe_join

__all__ = ['SkipExisting', 'SkipTagged']


class _SkipFinished(RecordsInitArgs, BaseTransform):
    """Short-cut images whose output exists; run ``transforms`` on the others.

    Subclasses say what "finished" means in :meth:`finished`.

    Args:
        transforms: Configs (or callables) run only for images to compute.
        placeholder_size: Side of the placeholder image; one ViT patch by
            default, so that it collates and costs nothing.
    """

    def __init__(self,
                 transforms: Sequence[Union[dict, Callable]] = (),
                 placeholder_size: int = 16) -> None:
        self.transforms = [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in transforms]
        self.placeholder_size = int(placeholder_size)

    def finished(self, results: dict) -> Optional[dict]:
        """The results to add for a finished image, or ``None`` to compute it."""
        raise NotImplementedError

    def transform(self, results: dict) -> Optional[dict]:
        """Mark and short-cut a finished image, or run the wrapped transforms."""
        done = self.finished(results)
        if done is not None:
            side = self.placeholder_size
            results.update(done, precomputed=True, img=np.zeros((side, side, 3), np.uint8),
                           img_shape=(side, side))
            return results
        results['precomputed'] = False
        for t in self.transforms:
            results = t(results)
            if results is None:
                return None
        return results


@TRANSFORMS.register_module()
class SkipExisting(_SkipFinished):
    """Skip images whose pseudo mask already exists; load and prepare the rest.

    Put it first in the pseudo-label test pipeline, wrapping the transforms
    that load and resize the image; list ``'precomputed'`` and
    ``'pred_seg_map'`` in ``PackSegInputs``'s ``meta_keys``. Which masks are
    kept: docs/resume.md, "Pseudo-label folders".

    Args:
        out_dir: The pseudo-label writer's ``out_dir``.
        transforms: Configs (or callables) run only for images to compute.
        placeholder_size: Side of the placeholder image.
        require_cams: Also require a loadable ``<img_id>.npz`` (set it when the
            writer runs with ``save_cams=True``).
    """

    def __init__(self,
                 out_dir: str,
                 transforms: Sequence[Union[dict, Callable]] = (),
                 placeholder_size: int = 16,
                 require_cams: bool = False) -> None:
        super().__init__(transforms, placeholder_size)
        self.out_dir = out_dir
        self.require_cams = require_cams
        self._sources: Optional[Dict[str, set]] = None

    def finished(self, results: dict) -> Optional[dict]:
        """The mask on disk (and its size), if it is complete."""
        img_id = image_id(results)
        path = safe_join(self.out_dir, img_id, '.png')
        mask = read_label_png(path)
        size = self._image_size(results) if mask is not None else None
        if size is not None and mask.shape != size:
            print_log(f'existing pseudo label {path} is {mask.shape[1]}x{mask.shape[0]} but '
                      f'the image is {size[1]}x{size[0]}; it will be recomputed',
                      logger='current', level=30)
            return None
        if mask is not None and not self._same_source(img_id, results.get('img_path'), path):
            print_log(f'existing pseudo label {path} was not made from the present version of '
                      f"{results.get('img_path')} (edited since, or written without a record "
                      'in .sources.rank*.jsonl); it will be recomputed', logger='current', level=30)
            return None
        if mask is not None and self.require_cams:
            if read_cam_file(safe_join(self.out_dir, img_id, '.npz')) is None:
                return None
        return None if mask is None else dict(pred_seg_map=mask, ori_shape=mask.shape)

    def _same_source(self, img_id: str, img_path: Optional[str], png_path: str) -> bool:
        """Whether the mask was written from the image as it is now (a missing image: yes)."""
        image = file_stamp(img_path)
        if image is None:
            return True
        if self._sources is None:  # read once per process, on the first image
            self._sources = read_sources(self.out_dir)
        return (tuple(image), file_sha256(png_path, use_cache=False)) in \
            self._sources.get(img_id, ())

    def _image_size(self, results: dict) -> Optional[tuple]:
        """(H, W) of the image as the wrapped loader turns it; ``None`` if unreadable."""
        if not results.get('img_path'):
            return None
        loader = next((t for t in self.transforms if hasattr(t, 'exif_transpose')), None)
        try:
            return read_image_size(results['img_path'],
                                   getattr(loader, 'exif_transpose', True),
                                   getattr(loader, 'max_pixels', DEFAULT_MAX_PIXELS))
        except ImageLoadError:
            return None

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(out_dir={self.out_dir!r}, '
                f'transforms={self.transforms}, placeholder_size={self.placeholder_size}, '
                f'require_cams={self.require_cams})')


@TRANSFORMS.register_module()
class SkipTagged(_SkipFinished):
    """Skip images that a killed tagging run already tagged; load the rest.

    Put it first in the tagging test pipeline, wrapping the transforms that
    load and resize the image; list ``'precomputed'`` and ``'pred_record'`` in
    ``PackInputs``'s ``meta_keys``. ``TagResumeHook`` points it at the
    journals (:meth:`set_journal`); an image is reused only with the same
    ``img_path``, size and modification time. See docs/resume.md, "The
    tagging journal".

    Args:
        transforms: Configs (or callables) run only for images to compute.
        placeholder_size: Side of the placeholder image.
    """

    def __init__(self,
                 transforms: Sequence[Union[dict, Callable]] = (),
                 placeholder_size: int = 16) -> None:
        super().__init__(transforms, placeholder_size)
        self.out_file: Optional[str] = None
        self._records: Dict[str, dict] = {}

    def set_journal(self, out_file: str, fingerprint: str) -> int:
        """Read the journals of ``out_file`` written with ``fingerprint`` (before loading).

        Args:
            out_file: The tag writer's ``out_file``.
            fingerprint: This run's settings (``resume_fingerprint``).

        Returns:
            How many images can be resumed.
        """
        self.out_file = out_file
        self._records = read_journals(out_file, fingerprint)
        return len(self._records)

    def finished(self, results: dict) -> Optional[dict]:
        """The journaled scores and tags of this image, if it has some."""
        record = self._records.get(image_id(results))
        if record is None or record.get('img_path') != results.get('img_path'):
            return None
        if record.get('img_stamp') != file_stamp(results.get('img_path')):
            print_log(f"{results.get('img_path')} changed since it was tagged (size or "
                      'modification time); it is tagged again', logger='current', level=30)
            return None
        prediction = dict(pred_score=decode_scores(record['scores']),
                          pred_label=torch.tensor(record['tags'], dtype=torch.long))
        done = dict(pred_record=prediction)
        if record.get('ori_shape') is not None:
            done['ori_shape'] = tuple(record['ori_shape'])
        return done

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(transforms={self.transforms}, '
                f'placeholder_size={self.placeholder_size}, out_file={self.out_file!r}, '
                f'resumable={len(self._records)})')
