"""Hand the test dataset's class vocabulary to an open-vocabulary model.

An open-vocabulary tagger has no fixed classes: the dataset defines them
(``metainfo=dict(classes=..., background_words=...)``). Rather than repeating
the list in the model config, this hook copies it into the model before the
test loop starts. A vocabulary given explicitly in the model config (or by a
tool's ``--classes FILE``) wins; it must then have as many classes as the
dataset, whose labels, masks and metrics count them.
"""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmseg.registry import HOOKS

__all__ = ['VocabularyHook', 'check_class_count']


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
        meta = runner.test_dataloader.dataset.metainfo
        if getattr(model, 'class_names', None) and not self.override:
            check_class_count(model, meta)
            return
        # A name file in metainfo keeps its synonyms in class_names.
        classes = meta.get('class_names') or meta.get('classes')
        if not classes:
            raise ValueError('VocabularyHook: the test dataset has no metainfo classes; set '
                             'metainfo=dict(classes=(...)) in the dataset or class_names in '
                             'the model config')
        model.set_vocabulary(classes, meta.get('background_words'))


def check_class_count(model, meta: dict) -> None:
    """Refuse a model vocabulary whose size differs from the dataset's.

    The dataset's count is that of ``tag_classes`` (pseudo-label datasets)
    or ``classes``; the model's is ``num_classes`` (with the background
    channel for ``TagCLIPSegmentor``).

    Raises:
        ValueError: Naming both counts and the name-file rule that most
            often explains them.
    """
    classes = meta.get('tag_classes') or meta.get('classes')
    if not classes or not isinstance(getattr(model, 'num_classes', None), int):
        return
    if model.num_classes != len(classes):
        raise ValueError(
            f'the model has {model.num_classes} classes but the test dataset has {len(classes)} '
            f'({", ".join(map(str, list(classes)[:3]))}, ...): give one name per dataset class, '
            'in its order. A name file whose line 1 holds background words (the peers\' '
            'cls_voc21.txt, cls_context60.txt, cls_coco_object.txt) needs --background-line '
            "(first_line='background' in Python); a dataset with a background class counts it")
