"""Command-line pieces shared by the train, test and pseudo-label tools."""
import argparse
import os
import os.path as osp
import textwrap
from typing import Callable, List, Optional, Sequence

from mmengine.config import Config, DictAction
from mmengine.registry import Registry

from .config import set_config_vocabulary, set_data_root, set_open_vocab_protocol
from .dist import stop_with_launcher
from .name_files import read_name_file
from .quirks import QUIRK_PRESETS

__all__ = ['add_runner_args', 'parse_runner_args', 'load_config', 'default_work_dir',
           'add_quirks_args', 'quirks_from_args', 'add_vocabulary_args', 'apply_vocabulary_args',
           'vocabulary_args_to_argv', 'NAME_FILE_HELP', 'FlagHelpFormatter']

CFG_OPTIONS_HELP = (
    'override some settings in the used config, the key-value pair in xxx=yyy format will be '
    'merged into config file. If the value to be overwritten is a list, it should be like '
    'key="[a,b]" or key=a,b It also allows nested list/tuple values, e.g. '
    'key="[(a,b),(c,d)]" Note that the quotation marks are necessary and that no white space '
    'is allowed: mmengine removes every space, also inside quotes (espresso cup becomes '
    'espressocup). Give names with spaces in a name file (--classes FILE, --background-words '
    'FILE, where the tool has them) and the dataset folder with --data-root.')

#: ``args`` attributes of :func:`add_vocabulary_args` (``--background-line``
#: is the one switch).
VOCABULARY_FLAGS = ('classes', 'classes_sep', 'background_line', 'background_words',
                    'background_words_sep')

#: The name-file rules, for every tool's --help.
NAME_FILE_HELP = (
    "Name file: one class per line, in the dataset's order; the synonyms of a class on its "
    'line, separated by SEP; spaces inside names are kept (espresso cup). Without SEP, lines '
    'are split on "; " when any line contains "; ", else on ",". ADE-847-style files of the '
    '"; " peers (ProxyCLIP, Trident, CorrCLIP: one name with commas per line, "building, '
    'edifice") contain no "; " and need --classes-sep "; ".')


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
    """Parse, and export ``LOCAL_RANK`` unless a launcher already did."""
    args = parser.parse_args(argv)
    if args.launcher == 'pytorch':
        stop_with_launcher()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_config(args: argparse.Namespace) -> Config:
    """``args.config`` with ``--cfg-options``, ``--data-root`` and ``--launcher`` applied.

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
    """Set ``cfg.work_dir``: the flag, the config, then ``./work_dirs/<config name>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def add_quirks_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--quirks reference|fixed`` (default ``None``: not given)."""
    parser.add_argument('--quirks', choices=QUIRK_PRESETS,
                        help="reference quirks preset of the models, docs/modes.md "
                        "(default: 'reference', the published behaviour)")


def quirks_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The preset named by ``--quirks``, ``'reference'`` when not given.

    Also sets ``args.quirks`` to it.
    """
    args.quirks = args.quirks or 'reference'
    return args.quirks


class FlagHelpFormatter(argparse.HelpFormatter):
    """argparse's formatter without line breaks inside flags such as ``--classes-sep``."""

    def _split_lines(self, text: str, width: int) -> List[str]:
        return textwrap.wrap(' '.join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(' '.join(text.split()), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False)


def add_vocabulary_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--classes``, ``--background-line``, ``--background-words`` and their ``-sep`` flags."""
    parser.formatter_class = FlagHelpFormatter
    group = parser.add_argument_group('vocabulary from name files', NAME_FILE_HELP)
    group.add_argument('--classes', metavar='FILE',
                       help="class names of the model (replaces the config's)")
    group.add_argument('--classes-sep', metavar='SEP',
                       help='separator of synonyms in --classes FILE (default: detected)')
    group.add_argument('--background-line', action='store_true',
                       help='line 1 of --classes FILE is the background class 0, as in the '
                       "peers' cls_voc21.txt, cls_context60.txt and cls_coco_object.txt: its "
                       'names become the background words (unless --background-words is '
                       'given) and lines 2.. are the classes')
    group.add_argument('--background-words', metavar='FILE',
                       help='softmax competitors of the model, every name of the file '
                       "(replaces the config's)")
    group.add_argument('--background-words-sep', metavar='SEP',
                       help='separator in --background-words FILE (default: detected)')


def apply_vocabulary_args(cfg: Config, args: argparse.Namespace, registry: Registry,
                          resolve_background: Optional[Callable] = None) -> Optional[str]:
    """Read the name files of :func:`add_vocabulary_args` into ``cfg``.

    ``registry`` and ``resolve_background`` (the models' registry and
    background-word resolver, passed in by the tools) go to
    :func:`~tagclip_mmseg.utils.config.set_config_vocabulary`.

    Returns:
        str | None: One line saying what was read (None without the flags).

    Raises:
        ValueError: A flag that needs another, or a config without a model
            that takes a vocabulary.
    """
    flags = {name: getattr(args, name, None) for name in VOCABULARY_FLAGS}
    args = argparse.Namespace(**{**vars(args), **flags})  # callers may build args by hand
    if args.background_line and not args.classes:
        raise ValueError('--background-line needs --classes FILE')
    if not args.classes and not args.background_words:
        return None
    classes = words = None
    notes = []
    if args.classes:
        names = read_name_file(args.classes, args.classes_sep,
                               'background' if args.background_line else 'class')
        classes = names.classes()
        notes.append(f'{len(classes)} classes from {args.classes} (sep {names.sep!r}'
                     + (', line 1 = background' if args.background_line else '') + ')')
        if args.background_line and not args.background_words:
            words = names.background_words()
            notes.append(f'{len(words)} background words from its line 1')
    if args.background_words:
        words = read_name_file(args.background_words, args.background_words_sep).background_words()
        notes.append(f'{len(words)} background words from {args.background_words}')
    updated, dropped = set_config_vocabulary(cfg, registry, classes, words, resolve_background)
    if not updated:
        raise ValueError(f'--classes / --background-words were given but {args.config} has no '
                         'model that takes class names')
    if dropped:
        notes.append(f'background words that are now classes left out: {", ".join(dropped)}')
    return 'vocabulary: ' + '; '.join(notes)


def vocabulary_args_to_argv(args: argparse.Namespace) -> List[str]:
    """The flags of :func:`add_vocabulary_args` that were given, as argv."""
    argv: List[str] = []
    for flag in VOCABULARY_FLAGS:
        value = getattr(args, flag, None)
        if value is True:
            argv.append('--' + flag.replace('_', '-'))
        elif value not in (None, False):
            argv += ['--' + flag.replace('_', '-'), value]
    return argv
