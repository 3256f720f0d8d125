"""Resuming killed runs: everything that reuses outputs already on disk.

Models compute; this package decides what they need not compute and fills in
the rest (docs/resume.md). Importing registers the transforms, the loop and
the hooks in mmseg's registries.
"""
from .fingerprint import (NOT_RESULT_SETTINGS, model_settings, pipeline_settings,
                          resume_fingerprint, settings_of)
from .loop import ResumableTestLoop, predict_or_restore, require_resumable_loop, select_samples
from .pseudo_label_hook import (SETTINGS_FILE, PseudoLabelResumeHook, pseudo_label_settings,
                                settings_changes)
from .restore import (COMPUTE, FAILED, RESTORE, empty_prediction, fill_prediction,
                      restore_prediction, sample_status)
from .skip import SkipExisting, SkipTagged
from .tag_hook import TagResumeHook

__all__ = [
    'NOT_RESULT_SETTINGS', 'model_settings', 'pipeline_settings', 'resume_fingerprint',
    'settings_of', 'ResumableTestLoop', 'predict_or_restore', 'require_resumable_loop',
    'select_samples', 'SETTINGS_FILE', 'PseudoLabelResumeHook', 'pseudo_label_settings',
    'settings_changes', 'COMPUTE', 'FAILED', 'RESTORE', 'empty_prediction', 'fill_prediction',
    'restore_prediction', 'sample_status', 'SkipExisting', 'SkipTagged', 'TagResumeHook'
]
