"""TagCLIP and CLIP-ES for OpenMMLab.

Importing this package registers every model, dataset, transform, metric and
hook into mmseg's registries (default scope ``mmseg``). Configs load it with::

    custom_imports = dict(imports=['tagclip_mmseg'], allow_failed_imports=False)
"""
from .utils.torch_compat import check_mmcv_ops, check_torch_version
from .version import __version__  # noqa: F401

# Before mmseg is imported: it imports mmcv's compiled ops, which fail with an
# undefined symbol under a torch they were not built for.
check_torch_version()
check_mmcv_ops()

from . import datasets, engine, evaluation, models, resume  # noqa: F401,E402

__all__ = ['__version__']
