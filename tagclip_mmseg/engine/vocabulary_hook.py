"""Hand the test dataset's class vocabulary to an open-vocabulary model.

A vocabulary given in the model config (or by ``--classes FILE``) wins, and must
then have as many classes as the dataset.
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
        """Give the model the test dataset's vocabulary."""
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

    Args:
        model: The model; its ``num_classes`` is compared.
        meta: The dataset metainfo (``tag_classes`` or ``classes``).

    Raises:
        ValueError: Naming both counts.
    """
    classes = meta.get('tag_classes') or meta.get('classes')
    if not classes or not isinstance(getattr(model, 'num_classes', None), int):
        return
    if model.num_classes != len(classes):
        raise ValueError(
            f'the model has {model.num_classes} classes but the test dataset has {len(classes)} '
            f'({", ".join(map(str, list(classes)[:3]))}, ...): give one name per dataset class, '
            "in its order. A name file whose line 1 holds background words (the peers' "
            'cls_voc21.txt, cls_context60.txt, cls_coco_object.txt) needs --background-line '
            "(first_line='background' in Python); a dataset with a background class counts it")
