"""Let mmengine 0.10.7 resume training under torch >= 2.6 (OpenMMLab trap 6).

torch 2.6 changed the default of ``torch.load`` to ``weights_only=True``,
which only unpickles tensors and plain containers. mmengine 0.10.7 calls
``torch.load`` without the flag, and a *training* checkpoint holds more than
weights: the message hub's ``HistoryBuffer`` objects and numpy scalars in the
log history. So ``tools/train.py --resume`` fails with
``UnpicklingError: Weights only load failed`` (open-mmlab/mmengine#1655; fixed
only after 0.10.7). Plain state dicts (``load_from``, ``init_cfg`` Pretrained)
still load, which is why the bug shows up only on resume.

The fix: re-register the loader of mmengine's ``CheckpointLoader`` for local
paths (the ``''`` scheme, which every path without a URL prefix falls back
to) with one that passes ``weights_only=False``. It is applied on
``import tagclip_mmseg``, so every tool and config that imports the plugin
gets it. Remote schemes (``http://``, ``open-mmlab://``, ...) keep the safe
default.

Security note: ``weights_only=False`` runs arbitrary pickled code from the
file. That is acceptable for checkpoints this project or the user wrote to
local disk (the usual ``--resume`` / ``load_from`` / pretrained files), and is
exactly what mmengine did before torch 2.6; do not point a config at a local
checkpoint from an untrusted source. The shell launchers additionally export
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, torch's own switch for the same
behaviour, so that scripts which do not import the plugin also resume.
"""
import os.path as osp
from typing import Any, Callable, Optional, Union

import torch
from mmengine.runner import CheckpointLoader

__all__ = ['load_from_local', 'register_trusted_local_loader']

MapLocation = Optional[Union[str, torch.device, Callable]]


def load_from_local(filename: str, map_location: MapLocation = None) -> Any:
    """Load a trusted local checkpoint with full unpickling.

    The name matches mmengine's loader so that its log line still reads
    "Loads checkpoint by local backend".

    Args:
        filename (str): Path of the checkpoint (``~`` is expanded).
        map_location: As in :func:`torch.load`.

    Returns:
        The unpickled checkpoint (usually a dict).

    Raises:
        FileNotFoundError: If ``filename`` is not a file.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename!r} can not be found; check the path '
                                '(--resume looks for the last_checkpoint of --work-dir).')
    return torch.load(filename, map_location=map_location, weights_only=False)


def register_trusted_local_loader() -> None:
    """Make :func:`load_from_local` mmengine's loader for local paths.

    Idempotent; called once on ``import tagclip_mmseg``.
    """
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)


register_trusted_local_loader()
