"""The pinned stack imports as a whole: what `make test` installs must work together."""
import importlib

import pytest

#: The classic CI stack (make test-classic) runs this whole file.
pytestmark = pytest.mark.classic


@pytest.mark.parametrize('module', [
    'mmcv.ops', 'mmengine.runner', 'mmseg.models', 'mmseg.datasets', 'mmpretrain.models',
    'mmpretrain.datasets', 'mmpretrain.evaluation', 'tagclip_mmseg'
])
def test_stack_imports(module):
    importlib.import_module(module)


def test_plugin_registers_into_mmseg():
    from mmseg.registry import DATASETS, METRICS, MODELS

    import tagclip_mmseg
    assert tagclip_mmseg.__version__
    assert MODELS.get('TagCLIP') is not None
    assert MODELS.get('CLIPESPseudoLabeler') is not None
    assert DATASETS.get('VOCTaggedSegDataset') is not None
    assert METRICS.get('TaggingMetric') is not None
