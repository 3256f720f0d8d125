"""Read class and background-word name files, as the peers write them.

One class per line, synonyms split on one literal separator
(docs/add_dataset.md, "Name files").
"""
import os
import os.path as osp
import warnings
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    'NameFile', 'NameFileError', 'FIRST_LINE_CHOICES', 'read_name_file', 'read_class_names',
    'read_background_words', 'detect_separator', 'name_file_spec', 'is_name_file_path'
]

#: What line 1 of a name file is: a class, or the background (its names are
#: then the background words).
FIRST_LINE_CHOICES = ('class', 'background')

#: A class is one name, or a list of synonyms.
ClassName = Union[str, List[str]]


class NameFileError(ValueError):
    """A name file that cannot be read as a vocabulary (names file and line)."""


def detect_separator(lines: Sequence[str]) -> str:
    """``'; '`` when any line contains it, else ``','``.

    ADE-847-style files need the separator given explicitly.
    """
    return '; ' if any('; ' in line for line in lines) else ','


@dataclass(frozen=True)
class NameFile:
    """A parsed name file: the names of each line, in file order.

    Attributes:
        path (str): The file, as given.
        sep (str): The separator the lines were split on.
        lines (tuple[tuple[str, ...], ...]): Stripped names, one tuple per line.
        first_line (str): ``'class'`` or ``'background'`` (see
            :data:`FIRST_LINE_CHOICES`).
    """
    path: str
    sep: str
    lines: Tuple[Tuple[str, ...], ...]
    first_line: str = 'class'

    @property
    def class_lines(self) -> Tuple[Tuple[str, ...], ...]:
        """The lines that are foreground classes."""
        return self.lines[1:] if self.first_line == 'background' else self.lines

    def classes(self) -> List[ClassName]:
        """One entry per class line: the name, or the list of its synonyms."""
        return [names[0] if len(names) == 1 else list(names) for names in self.class_lines]

    def background_words(self) -> List[str]:
        """Line 1's names when it is the background line, else every name."""
        lines = self.lines[:1] if self.first_line == 'background' else self.lines
        return [name for names in lines for name in names]


def read_name_file(path: Union[str, os.PathLike],
                   sep: Optional[str] = None,
                   first_line: str = 'class') -> NameFile:
    """Read a name file: one class per line, synonyms split on ``sep``.

    Names are stripped and kept in order; a repeated name is kept with a
    warning.

    Args:
        path (str | PathLike): The file (UTF-8; a BOM is ignored).
        sep (str, optional): Literal separator between synonyms; None:
            :func:`detect_separator`.
        first_line (str): ``'background'`` when line 1 holds the background
            words of class 0, as in the peers' ``cls_voc21.txt``.

    Returns:
        NameFile: The names per line.

    Raises:
        NameFileError: An empty file, a blank line or an empty name between
            separators, naming the file and line; an empty ``sep``.
        FileNotFoundError: When ``path`` is not a file.
    """
    path = os.fspath(path)
    if first_line not in FIRST_LINE_CHOICES:
        raise ValueError(f'first_line must be one of {FIRST_LINE_CHOICES}, got {first_line!r}')
    if sep is not None and (not isinstance(sep, str) or not sep.strip()):
        raise NameFileError(f'the separator of {path!r} must be a non-blank string such as "," '
                            f'or "; ", got {sep!r}')
    full = osp.expanduser(path)
    if not osp.isfile(full):
        raise FileNotFoundError(f'name file {path!r} does not exist (one class per line, '
                                'synonyms separated by "," or "; ")')
    # Universal newlines, as the peers' open(path).readlines(): CRLF and CR
    # become LF; a final newline ends the last line rather than adding one.
    with open(full, encoding='utf-8-sig') as f:
        text = f.read()
    if not text.strip():
        raise NameFileError(f'name file {path!r} is empty; write one class per line')
    raw = text.split('\n')
    if raw[-1] == '':
        raw.pop()
    sep = detect_separator(raw) if sep is None else sep
    lines = []
    for number, line in enumerate(raw, 1):
        if not line.strip():
            raise NameFileError(f'{path}, line {number}: blank line; every line is one class '
                                '(a blank line would shift every later class): remove it')
        names = tuple(name.strip() for name in line.split(sep))
        if not all(names):
            raise NameFileError(f'{path}, line {number}: empty name between separators '
                                f'{sep!r} in {line.strip()!r}; remove the extra separator')
        lines.append(names)
    if first_line == 'background' and len(lines) < 2:
        raise NameFileError(f'{path}: first_line="background" needs the background line and at '
                            f'least one class line, got {len(lines)} line(s)')
    _warn_duplicates(path, lines)
    return NameFile(path=path, sep=sep, lines=tuple(lines), first_line=first_line)


def _warn_duplicates(path: str, lines: Sequence[Tuple[str, ...]]) -> None:
    """One warning listing every name that occurs more than once, with its lines."""
    where: Dict[str, List[int]] = {}
    for number, names in enumerate(lines, 1):
        for name in names:
            where.setdefault(' '.join(name.lower().split()), []).append(number)
    repeats = [f'{name!r} on lines {", ".join(map(str, numbers))}'
               for name, numbers in where.items() if len(numbers) > 1]
    if repeats:
        warnings.warn(f'name file {path!r} repeats names (kept, as the peers keep them): '
                      + '; '.join(repeats), stacklevel=3)


def read_class_names(path: Union[str, os.PathLike],
                     sep: Optional[str] = None,
                     first_line: str = 'class') -> List[ClassName]:
    """The classes of a name file (see :func:`read_name_file`)."""
    return read_name_file(path, sep, first_line).classes()


def read_background_words(path: Union[str, os.PathLike],
                          sep: Optional[str] = None,
                          first_line: str = 'class') -> List[str]:
    """Background words of a name file (see :func:`read_name_file`)."""
    return read_name_file(path, sep, first_line).background_words()


def is_name_file_path(value) -> bool:
    """Whether ``value`` is a path object, or a string ending in ``.txt`` or naming a file."""
    return isinstance(value, os.PathLike) or (isinstance(value, str) and (
        value.endswith('.txt') or osp.isfile(osp.expanduser(value))))


def name_file_spec(value) -> Optional[NameFile]:
    """A :class:`NameFile` when ``value`` names one, else None.

    A path (an existing file or ``*.txt``) or ``dict(file=..., sep=...,
    first_line=...)``; other strings are left to the caller.

    Raises:
        NameFileError: A dict without ``file`` or with unknown keys.
    """
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {'file', 'sep', 'first_line'})
        if 'file' not in value or unknown:
            raise NameFileError('a name-file vocabulary is dict(file=PATH, sep=None, '
                                f"first_line='class'), got keys {sorted(value)}")
        return read_name_file(value['file'], value.get('sep'), value.get('first_line', 'class'))
    if is_name_file_path(value):
        return read_name_file(value)
    return None
