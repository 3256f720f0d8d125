"""Keep a pseudo-label folder to one set of settings.

``<out_dir>/settings.json`` records what made the masks (:mod:`.fingerprint`);
a resuming run with other settings, an interrupted ``--overwrite`` or masks
without a record stop before any image. See docs/resume.md, "Pseudo-label
folders".
"""
import glob
import hashlib
import json
import os.path as osp
from typing import Any, Dict, List, Optional

from mmengine.dist import broadcast_object_list, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from ..evaluation.output_writer import writers_of
from ..evaluation.pseudo_label_writer import PseudoLabelWriter
from ..utils.io import atomic_write_text
from .fingerprint import model_settings, pipeline_settings
from .loop import require_resumable_loop
from .skip import SkipExisting

__all__ = ['SETTINGS_FILE', 'PseudoLabelResumeHook', 'pseudo_label_settings', 'settings_changes']

#: The record of a pseudo-label folder's settings, in the writer's ``out_dir``.
SETTINGS_FILE = 'settings.json'
_FORMAT = 'tagclip_mmseg/pseudo-label-settings/2'


def _tags_digest(dataset) -> Optional[str]:
    """SHA-256 of every image's ``(img_id, tags)``, or None when the dataset gives no tags."""
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    if not any('tags' in info for info in infos):
        return None
    pairs = sorted((str(info.get('img_id')), sorted(int(t) for t in info.get('tags') or ()))
                   for info in infos)
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def pseudo_label_settings(model, dataset, pipeline: List[Any]) -> Dict[str, Any]:
    """What decides the masks of a run (model, pixel transforms, tags digest), as JSON."""
    return json.loads(json.dumps(dict(
        format=_FORMAT, model=model_settings(model), pixels=pipeline_settings(pipeline),
        tags=_tags_digest(dataset)), sort_keys=True, default=repr))


def settings_changes(old: Any, new: Any, name: str = '') -> List[str]:
    """One line per setting that differs, named by its innermost path (``model.caa_layers``).

    Args:
        old: The recorded settings.
        new: This run's settings.
        name: Path of ``old`` and ``new`` in the record.

    Returns:
        The lines; ``state`` is not a setting.
    """
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(set(old) | set(new)) if key != 'state'
                for line in settings_changes(old.get(key), new.get(key),
                                             f'{name}.{key}' if name else key)]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [line for i, (a, b) in enumerate(zip(old, new))
                for line in settings_changes(a, b, f'{name}[{i}]')]
    if name == 'tags':
        return ["tags: the images' tags differ (another tags file or tag source?)"]
    return [f'{name}: {_short(old)} -> {_short(new)}']


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + '...'


def _read(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, encoding='utf-8') as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write(path: str, settings: Dict[str, Any], state: str) -> None:
    atomic_write_text(path, json.dumps(dict(settings, state=state), indent=1, sort_keys=True)
                      + '\n')


_FRESH = ('recompute every mask with tools/generate_pseudo_labels.py --overwrite (in a config: '
          'drop SkipExisting), or write to a new --out')


@HOOKS.register_module()
class PseudoLabelResumeHook(Hook):
    """Check (resuming) or record (every run) a pseudo-label folder's settings.

    Raises in ``before_test`` a ``RuntimeError`` naming the folder, the
    settings that changed and how to start fresh.
    """

    priority = 'NORMAL'  # after VocabularyHook (VERY_HIGH): needs the vocabulary

    def __init__(self) -> None:
        self._records: List[tuple] = []

    def before_test(self, runner) -> None:
        """Check the folder's record against this run's settings, then write it."""
        self._records = []
        writers = writers_of(runner, PseudoLabelWriter)
        if not writers:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        dataset = runner.test_dataloader.dataset
        pipeline = getattr(getattr(dataset, 'pipeline', None), 'transforms', None) or []
        resuming = any(isinstance(t, SkipExisting) for t in pipeline)
        if resuming:
            require_resumable_loop(runner, 'SkipExisting')
        settings = pseudo_label_settings(model, dataset, pipeline)
        # Rank 0 checks and records before any rank writes a mask; every rank stops with it.
        problem = [None]
        if is_main_process():
            try:
                for out_dir in sorted({w.out_dir for w in writers}):
                    path = osp.join(out_dir, SETTINGS_FILE)
                    if resuming:
                        self._check(out_dir, path, settings)
                    _write(path, settings, 'resumable' if resuming else 'overwriting')
            except RuntimeError as e:
                problem[0] = str(e)
        broadcast_object_list(problem)
        if problem[0] is not None:
            raise RuntimeError(problem[0])
        self._records = [(osp.join(out_dir, SETTINGS_FILE), settings)
                         for out_dir in sorted({w.out_dir for w in writers})]

    @staticmethod
    def _check(out_dir: str, path: str, settings: Dict[str, Any]) -> None:
        """Refuse to keep masks of other or unknown settings."""
        old = _read(path)
        if old is None:
            masks = glob.glob(osp.join(glob.escape(out_dir), '*.png'))
            if masks:
                raise RuntimeError(
                    f'{out_dir} holds {len(masks)} masks but no {SETTINGS_FILE} saying which '
                    'settings made them (written by hand or by an older version), so they '
                    f'cannot be kept safely; {_FRESH}')
            return
        changes = settings_changes(old, settings)
        if changes:
            raise RuntimeError(
                f'{out_dir} holds masks made with other settings; keeping them would mix two '
                'runs. Changed:\n  ' + '\n  '.join(changes) + f'\nTo start fresh, {_FRESH}')
        if old.get('state') == 'overwriting':
            raise RuntimeError(
                f'an --overwrite run into {out_dir} was interrupted: the folder mixes masks of '
                'the old and the new settings. Run with --overwrite again (or write to a new '
                '--out)')

    def after_test_epoch(self, runner, metrics=None) -> None:
        """Every image is written: the folder can be resumed from now on.

        ``after_test_epoch`` (after the evaluator) rather than ``after_test``,
        so that ``WriterRunHook`` still holds the lock.
        """
        if is_main_process():
            for path, settings in self._records:
                _write(path, settings, 'resumable')
        self._records = []
