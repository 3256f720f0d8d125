"""Connect a tagging run's journal writer and its resume transform.

``TagFileWriter`` journals, ``SkipTagged`` reuses; this hook hands the writer's
``out_file`` and the run's fingerprint (:mod:`.fingerprint`) to both in
``before_test``, after ``VocabularyHook`` and before the dataloader workers
start. See docs/resume.md, "The tagging journal".
"""
from mmengine.dist import barrier
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS

from ..evaluation.output_writer import writers_of
from ..evaluation.tag_writer import TagFileWriter
from .fingerprint import resume_fingerprint
from .loop import require_resumable_loop
from .skip import SkipTagged

__all__ = ['TagResumeHook']

#: Meta keys that carry a resumed image's result from SkipTagged to the test loop.
RESUME_META_KEYS = ('precomputed', 'pred_record')


@HOOKS.register_module()
class TagResumeHook(Hook):
    """Point ``SkipTagged`` at the ``TagFileWriter``'s journals of this run.

    Resuming needs exactly one ``TagFileWriter`` in ``test_evaluator`` and at
    most one ``SkipTagged`` in the test pipeline; the writer journals in any
    case, the transform reuses only journals with this run's fingerprint.
    """

    priority = 'NORMAL'  # after VocabularyHook (VERY_HIGH): needs the vocabulary

    def before_test(self, runner) -> None:
        """Arm the writer and ``SkipTagged``; then wait for every rank.

        The barrier keeps a fast rank from journaling its first images while
        a slower one still reads the journals: the slower rank would count
        them as resumable (they belong to the other rank's shard, so only its
        log line was wrong) or read a half-written line as one a kill tore.
        """
        self._arm(runner)
        barrier()

    def _arm(self, runner) -> None:
        """Fingerprint the run, hand it to the writer and point ``SkipTagged`` at the journals."""
        writers = writers_of(runner, TagFileWriter)
        pipeline = getattr(getattr(runner.test_dataloader.dataset, 'pipeline', None),
                           'transforms', None) or []
        skips = [i for i, t in enumerate(pipeline) if isinstance(t, SkipTagged)]
        if not writers:
            if skips:
                runner.logger.warning('SkipTagged is in the pipeline but test_evaluator has no '
                                      'TagFileWriter: nothing to resume from')
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if len(writers) > 1 or len(skips) > 1:
            runner.logger.warning(
                'tagging resume is off: it needs one TagFileWriter and at most one SkipTagged, '
                f'got {len(writers)} and {len(skips)}')
            return
        skip = pipeline[skips[0]] if skips else None
        if skip is not None:
            self._check_packed(pipeline[skips[0] + 1:])
            require_resumable_loop(runner, 'SkipTagged')
        fingerprint = resume_fingerprint(model, pipeline)
        writers[0].set_fingerprint(fingerprint)
        if skip is not None:
            found = skip.set_journal(writers[0].out_file, fingerprint)
            if found:
                runner.logger.info(f'resuming: {found} images are already tagged in the '
                                   f'journals of {writers[0].out_file}')

    @staticmethod
    def _check_packed(after: list) -> None:
        """Fail when ``PackInputs`` after ``SkipTagged`` drops the resume meta keys."""
        if not any(set(RESUME_META_KEYS) <= set(getattr(t, 'meta_keys', ()) or ())
                   for t in after):
            raise ValueError(f'SkipTagged needs {RESUME_META_KEYS} in the meta_keys of the '
                             'PackInputs after it (see configs/_base_/datasets/'
                             'tagging_pipeline.py)')
