"""Resuming killed runs: everything that reuses outputs already on disk.

Models compute; this package decides what they need not compute and fills in
the rest. Read top-down:

* :mod:`.journal` -- the tagging journal (``TagJournal``): each tagged image on
  disk as soon as it exists, read back exactly;
* :mod:`.files` -- finished masks and CAM files read back; temporaries of a
  killed run removed;
* :mod:`.skip` -- ``SkipTagged`` and ``SkipExisting``, the dataset transforms
  that mark finished images ``precomputed`` and skip loading them;
* :mod:`.restore` -- a ``precomputed`` or ``load_error`` sample turned into the
  prediction fields a computed one would carry;
* :mod:`.loop` -- ``ResumableTestLoop``: the model gets only the samples to
  compute, the evaluator all of them in input order;
* :mod:`.fingerprint` -- every setting of the model and the pipeline, derived
  from their constructor arguments: outputs are reused only by a run with the
  same settings;
* :mod:`.tag_hook`, :mod:`.pseudo_label_hook` -- ``TagResumeHook`` and
  ``PseudoLabelResumeHook``, which connect writers, transforms and settings
  before the first image.

Importing registers the transforms, the loop and the hooks in mmseg's
registries.
"""
from .files import PNG_TRAILER, read_cam_file, read_label_png, remove_stale_temp_files
from .fingerprint import (NOT_RESULT_SETTINGS, model_settings, pipeline_settings,
                          resume_fingerprint, settings_of)
from .journal import (JOURNAL_FORMAT, TagJournal, decode_scores, encode_scores, journal_path,
                      journal_paths, read_journals)
from .loop import ResumableTestLoop, predict_or_restore, require_resumable_loop, select_samples
from .pseudo_label_hook import (SETTINGS_FILE, PseudoLabelResumeHook, pseudo_label_settings,
                                settings_changes)
from .restore import (COMPUTE, FAILED, RESTORE, empty_prediction, fill_prediction,
                      restore_prediction, sample_status)
from .skip import SkipExisting, SkipTagged
from .tag_hook import TagResumeHook

__all__ = [
    'PNG_TRAILER', 'read_cam_file', 'read_label_png', 'remove_stale_temp_files',
    'NOT_RESULT_SETTINGS', 'model_settings', 'pipeline_settings', 'resume_fingerprint',
    'settings_of', 'JOURNAL_FORMAT', 'TagJournal',
    'decode_scores', 'encode_scores', 'journal_path', 'journal_paths', 'read_journals',
    'ResumableTestLoop', 'predict_or_restore', 'require_resumable_loop', 'select_samples',
    'SETTINGS_FILE', 'PseudoLabelResumeHook', 'pseudo_label_settings', 'settings_changes',
    'COMPUTE', 'FAILED', 'RESTORE', 'empty_prediction', 'fill_prediction',
    'restore_prediction', 'sample_status', 'SkipExisting', 'SkipTagged', 'TagResumeHook'
]
