"""Command-line pieces shared by ``tools/train.py``, ``tools/test.py`` and
``tools/generate_pseudo_labels.py``.

All three take a config, ``--cfg-options``, a ``--launcher`` and the local
rank that ``torch.distributed.launch`` passes, and load the config the same
way; keeping that here means a fix (a new launcher spelling, the local-rank
environment variable) reaches every tool at once.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Optional, Sequence

from mmengine.config import Config, DictAction

from .config import set_data_root, set_open_vocab_protocol
from .dist import stop_with_launcher
from .quirks import LEGACY_MODES, QUIRK_PRESETS

__all__ = ['add_runner_args', 'parse_runner_args', 'load_config', 'default_work_dir',
           'add_quirks_args', 'quirks_from_args']

CFG_OPTIONS_HELP = (
    'override some settings in the used config, the key-value pair in xxx=yyy format will be '
    'merged into config file. If the value to be overwritten is a list, it should be like '
    'key="[a,b]" or key=a,b It also allows nested list/tuple values, e.g. '
    'key="[(a,b),(c,d)]" Note that the quotation marks are necessary and that no white space '
    'is allowed. Values with spaces need inner quotes, e.g. key="\'my photos\'"; for the '
    'dataset folder use --data-root instead.')


def add_runner_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--cfg-options``, ``--data-root``, ``--launcher`` and ``--local-rank``."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help=CFG_OPTIONS_HELP)
    parser.add_argument(
        '--data-root', metavar='PATH',
        help='dataset root of every dataset in the config, taken verbatim (spaces, commas and '
        'non-ASCII characters need only shell quoting: --data-root "my photos")')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_runner_args(parser: argparse.ArgumentParser,
                      argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse, and export the local rank as ``LOCAL_RANK`` unless a launcher
    already did (mmengine reads it from the environment). Under torchrun, a
    rank stops when its launcher dies (:func:`stop_with_launcher`)."""
    args = parser.parse_args(argv)
    if args.launcher == 'pytorch':
        stop_with_launcher()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_config(args: argparse.Namespace) -> Config:
    """``args.config`` with ``--cfg-options`` merged in, then ``--data-root``
    and ``--launcher`` set.

    ``open_vocab_protocol=NAME`` among the options switches an open-vocabulary
    config to that project's sizes (:func:`set_open_vocab_protocol`) before
    the other options are merged, so those still override single sizes.
    """
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    options = dict(args.cfg_options or {})
    if 'open_vocab_protocol' in options:
        set_open_vocab_protocol(cfg, options.pop('open_vocab_protocol'))
    if options:
        cfg.merge_from_dict(options)
    data_root = getattr(args, 'data_root', None)
    if data_root is not None:
        if not osp.isdir(osp.expanduser(data_root)):
            raise FileNotFoundError(f'--data-root {data_root!r} is not a folder')
        if not set_data_root(cfg, osp.expanduser(data_root)):
            raise ValueError(f'--data-root was given but {args.config} has no dataset with a '
                             'data_root')
    return cfg


def default_work_dir(cfg: Config, work_dir: Optional[str], config_path: str) -> None:
    """Set ``cfg.work_dir`` by priority: the flag, the config, then
    ``./work_dirs/<config name>`` (mmseg's rule)."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def add_quirks_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--quirks reference|fixed`` and its deprecated alias ``--mode``.

    Both default to ``None`` so that :func:`quirks_from_args` can tell a flag
    given from one left out.
    """
    parser.add_argument('--quirks', choices=QUIRK_PRESETS,
                        help="reference quirks preset of the models, docs/modes.md "
                        "(default: 'reference', the published behaviour)")
    parser.add_argument('--mode', choices=LEGACY_MODES,
                        help='deprecated alias of --quirks: faithful = reference, clean = fixed')


def quirks_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The preset named by ``--quirks`` or the deprecated ``--mode``.

    Sets ``args.quirks`` to it and drops ``args.mode``; a deprecated flag
    prints a note on stderr, and contradicting flags stop the parser.
    """
    quirks = args.quirks
    if args.mode is not None:
        legacy = 'reference' if args.mode == 'faithful' else 'fixed'
        print(f'warning: --mode {args.mode} is deprecated; use --quirks {legacy}',
              file=sys.stderr)
        if quirks is not None and quirks != legacy:
            parser.error(f'--mode {args.mode} contradicts --quirks {quirks}; give only --quirks')
        quirks = legacy
    args.quirks = quirks or 'reference'
    del args.mode
    return args.quirks
