"""Hand the test dataset's class vocabulary to an open-vocabulary model.

An open-vocabulary tagger has no fixed classes: the dataset defines them
(``metainfo=dict(classes=..., background_words=...)``). Rather than repeating
the list in the model config, this hook copies it into the model before the
test loop starts. A vocabulary given explicitly in the model config wins.
"""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmseg.registry import HOOKS

__all__ = ['VocabularyHook']


@HOOKS.register_module()
class VocabularyHook(Hook):
    """Call ``model.set_vocabulary(classes, background_words)`` from metainfo.

    Args:
        override (bool): Replace a vocabulary the model already has.
    """

    priority = 'VERY_HIGH'

    def __init__(self, override: bool = False) -> None:
        self.override = override

    def before_test(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if not hasattr(model, 'set_vocabulary'):
            return
        if getattr(model, 'class_names', None) and not self.override:
            return
        meta = runner.test_dataloader.dataset.metainfo
        classes = meta.get('classes')
        if not classes:
            raise ValueError('VocabularyHook: the test dataset has no metainfo classes; set '
                             'metainfo=dict(classes=(...)) in the dataset or class_names in '
                             'the model config')
        model.set_vocabulary(classes, meta.get('background_words'))
