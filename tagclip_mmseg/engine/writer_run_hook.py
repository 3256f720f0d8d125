"""Owns the run of every output writer: lock and clean-up before, release after."""
from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from ..evaluation.output_writer import writers_of

__all__ = ['WriterRunHook']


@HOOKS.register_module()
class WriterRunHook(Hook):
    """Take the ``OutputWriter`` locks in ``before_test``, release them after.

    Released in ``after_test`` and, under ``ResumableTestLoop``, when the run
    raises (its ``on_test_error``); under a plain ``TestLoop`` a failed run's
    lock goes when the process exits.
    """

    priority = 'ABOVE_NORMAL'  # before the resume hooks, which write into the outputs

    def before_test(self, runner) -> None:
        """Begin the run of every writer in ``test_evaluator``; undo all if one refuses."""
        begun = []
        try:
            for writer in writers_of(runner):
                writer.begin_run()
                begun.append(writer)
        except BaseException:
            for writer in begun:
                writer.end_run()
            raise

    def after_test(self, runner) -> None:
        """Release every writer's lock."""
        for writer in writers_of(runner):
            writer.end_run()

    def on_test_error(self, runner) -> None:
        """Release every writer's lock when the test run raises (``TEST_ERROR_EVENT``)."""
        self.after_test(runner)
