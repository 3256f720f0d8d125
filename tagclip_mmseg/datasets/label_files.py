"""Read and write image-level label files (``image_id idx idx ...``).

The format is in README.md, "Files and images between the stages".
"""
import os
import os.path as osp
import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from tagclip_mmseg.utils.io import atomic_write_text

__all__ = ['LabelFileError', 'encode_image_id', 'decode_image_id', 'read_label_file',
           'read_id_list', 'format_label_line', 'write_label_file']

PathLike = Union[str, os.PathLike]
_INT = re.compile(r'[+-]?\d+\Z')
#: One escaped byte, or a run of them (a multi-byte UTF-8 character).
_ESCAPED = re.compile(r'(?:%[0-9A-Fa-f]{2})+')


class LabelFileError(ValueError):
    """A malformed label or id-list file; the message names ``file:line``."""


def _needs_escape(char: str) -> bool:
    return char.isspace() or char in '%,' or not char.isprintable()


def encode_image_id(img_id: str) -> str:
    """An image id as one field of a label file (whitespace, ``%``, ``,`` become ``%XX``).

    Raises:
        ValueError: For an empty id, which no line could hold.
    """
    if not isinstance(img_id, str) or not img_id:
        raise ValueError(f'image id {img_id!r} cannot be written to a label file: ids must be '
                         'non-empty strings')
    return ''.join(''.join(f'%{b:02X}' for b in c.encode('utf-8')) if _needs_escape(c) else c
                   for c in img_id)


def decode_image_id(field: str) -> str:
    """Inverse of :func:`encode_image_id` (a ``%`` not followed by two hex digits is kept)."""
    return _ESCAPED.sub(lambda m: bytes.fromhex(m.group(0).replace('%', '')).decode(
        'utf-8', errors='surrogateescape'), field)


def _lines(path: PathLike) -> Iterable[Tuple[int, List[str]]]:
    """(line number, whitespace-split fields) for every non-blank line."""
    path = os.fspath(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'label file {path!r} does not exist')
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if fields:
                yield lineno, fields


def read_label_file(path: PathLike,
                    num_classes: Optional[int] = None,
                    index_map: Optional[Sequence[int]] = None) -> Dict[str, List[int]]:
    """Parse a label file into ``{image_id: [class indices]}`` in file order.

    Args:
        path (str | PathLike): The file.
        num_classes (int, optional): Vocabulary size for the range check
            (after ``index_map``); None skips it.
        index_map (Sequence[int], optional): Dataset index of each file
            index; -1 marks indices that must not occur.

    Returns:
        dict[str, list[int]]: Labels per image id; ``[]`` for an id-only line.

    Raises:
        FileNotFoundError: The file does not exist.
        LabelFileError: With ``file:line`` for commas, non-integers, indices
            out of range or unmapped, and duplicate image ids.
    """
    labels: Dict[str, List[int]] = {}
    first_seen: Dict[str, int] = {}
    for lineno, (field, *tokens) in _lines(path):
        where = f'{os.fspath(path)}:{lineno}'
        if ',' in field or any(',' in t for t in tokens):
            raise LabelFileError(
                f'{where}: commas are not separators in label files; expected '
                f'"image_id idx idx ..." separated by spaces, got {" ".join([field, *tokens])!r}')
        img_id = decode_image_id(field)
        if img_id in first_seen:
            raise LabelFileError(f'{where}: duplicate image id {img_id!r} '
                                 f'(first at line {first_seen[img_id]})')
        first_seen[img_id] = lineno
        indices: List[int] = []
        for token in tokens:
            if not _INT.match(token):
                raise LabelFileError(f'{where}: class index {token!r} of image {img_id!r} '
                                     'is not an integer')
            index = int(token)
            if index_map is not None:
                if not 0 <= index < len(index_map) or index_map[index] < 0:
                    raise LabelFileError(
                        f'{where}: class index {index} of image {img_id!r} has no entry in '
                        f'the index map (valid file indices: those of the '
                        f'{len(index_map)}-entry map that are not -1)')
                index = index_map[index]
            if num_classes is not None and not 0 <= index < num_classes:
                raise LabelFileError(
                    f'{where}: class index {index} of image {img_id!r} is outside the '
                    f'{num_classes} classes of the vocabulary (valid: 0..{num_classes - 1}); '
                    'is the file written for another dataset or class list?')
            if index not in indices:
                indices.append(index)
        labels[img_id] = indices
    return labels


def read_id_list(path: PathLike) -> List[str]:
    """Read image ids from a split list: the first field of each non-blank line.

    Raises:
        LabelFileError: With ``file:line`` for duplicate ids or commas in ids.
    """
    ids: List[str] = []
    first_seen: Dict[str, int] = {}
    for lineno, (field, *_) in _lines(path):
        where = f'{os.fspath(path)}:{lineno}'
        if ',' in field:
            raise LabelFileError(f'{where}: commas are not separators; got id {field!r}')
        img_id = decode_image_id(field)
        if img_id in first_seen:
            raise LabelFileError(f'{where}: duplicate image id {img_id!r} '
                                 f'(first at line {first_seen[img_id]})')
        first_seen[img_id] = lineno
        ids.append(img_id)
    return ids


def format_label_line(img_id: str, indices: Iterable[int]) -> str:
    """One line of a label file, without the newline; the id is escaped (:func:`encode_image_id`).

    Raises:
        ValueError: For an empty id.
    """
    return ' '.join([encode_image_id(img_id), *(str(int(i)) for i in indices)])


def write_label_file(path: PathLike,
                     labels: Union[Mapping[str, Iterable[int]], Iterable[Tuple[str, Iterable[int]]]]
                     ) -> None:
    """Write ``{image_id: indices}`` (or ``(id, indices)`` pairs) atomically.

    A crash leaves the previous file (or none), never a truncated one.

    Raises:
        ValueError: For ids that cannot be written (see
            :func:`format_label_line`) or written twice.
    """
    items = labels.items() if isinstance(labels, Mapping) else labels
    lines, seen = [], set()
    for img_id, indices in items:
        if img_id in seen:
            raise ValueError(f'image id {img_id!r} given twice for label file {os.fspath(path)!r}')
        seen.add(img_id)
        lines.append(format_label_line(img_id, indices) + '\n')
    atomic_write_text(path, ''.join(lines))
