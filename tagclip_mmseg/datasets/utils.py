"""Helpers shared by the dataset classes: class lists, folder scans, skips."""
import logging
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

from mmengine.logging import print_log

from ..utils.class_names import class_key
from ..utils.name_files import name_file_spec
from .image_io import IMG_EXTENSIONS

__all__ = [
    'validate_classes', 'check_choice', 'list_images', 'scan_images', 'join_root', 'report_missing',
    'MISSING_IMAGES_KEY', 'missing_image_record', 'skipped_list_path', 'read_skipped_list',
    'image_suffixes', 'locate_image', 'read_metainfo_name_files'
]


#: Metainfo key of the images a dataset lists but leaves out: a list of
#: :func:`missing_image_record` dicts, which the writers' summaries name.
MISSING_IMAGES_KEY = 'missing_images'


def skipped_list_path(tags_file: str) -> str:
    """Where the tagger lists skipped images: ``<tags file stem>.skipped.txt``."""
    return osp.splitext(tags_file)[0] + '.skipped.txt'


def read_skipped_list(path: str) -> Dict[str, str]:
    """``{img_id: reason}`` from a skipped list; ``{}`` when the file does not exist."""
    if not osp.isfile(path):
        return {}
    skipped: Dict[str, str] = {}
    with open(path, encoding='utf-8') as f:
        for line in f:
            fields = line.rstrip('\n').split('\t', 2)
            if fields[0]:
                skipped[fields[0]] = fields[2] if len(fields) == 3 else 'skipped by the tagger'
    return skipped


def missing_image_record(img_id: str, img_path: Optional[str] = None,
                         reason: Optional[str] = None) -> dict:
    """``dict(img_id, img_path, reason)`` for a listed image that is left out.

    Without ``reason``, it is read from the file system in the loader's words.
    """
    if reason is None:
        if img_path is None:
            reason = 'no image file with this id in the image folder'
        elif osp.isdir(img_path):
            reason = 'is a directory, not an image file'
        elif osp.islink(img_path):
            reason = 'file not found (broken symbolic link)'
        else:
            reason = 'file not found'
    return dict(img_id=img_id, img_path=img_path, reason=reason)


def read_metainfo_name_files(metainfo: Optional[dict]) -> Optional[dict]:
    """``metainfo`` with its name files read by the project's one reader.

    ``classes`` given as a name file become the first name of each class, and
    ``class_names`` keeps the synonyms for ``VocabularyHook``; a
    ``background_words`` name file becomes its list of words.
    """
    if not metainfo:
        return metainfo
    meta = dict(metainfo)
    names = name_file_spec(meta.get('classes'))
    if names is not None:
        classes = names.classes()
        first = ('background', ) if names.first_line == 'background' else ()
        meta['classes'] = first + tuple(class_key(c) for c in classes)
        meta['class_names'] = classes
        if first and meta.get('background_words') is None:
            meta['background_words'] = names.background_words()
    words = name_file_spec(meta.get('background_words'))
    if words is not None:
        meta['background_words'] = words.background_words()
    return meta


def validate_classes(classes, owner: str, synonyms: bool = False) -> tuple:
    """Check a class list: a non-empty sequence of unique, non-empty names.

    Args:
        classes: The ``metainfo`` classes.
        owner (str): Who asks, for the messages.
        synonyms (bool): Also accept a class given as a list of synonyms
            (``['person', 'people']``; the tagger joins them in its prompt).
            It is returned as a tuple.

    Raises:
        ValueError: Naming ``owner`` and what is wrong, with the fix.
    """
    if classes is None or isinstance(classes, str) or not isinstance(classes, Sequence):
        raise ValueError(f'{owner} needs metainfo=dict(classes=(...)): a list of class names '
                         f'(or a file with one name per line), got {classes!r}')
    if synonyms:
        classes = tuple(tuple(c) if isinstance(c, list) else c for c in classes)
    classes = tuple(classes)
    if not classes:
        raise ValueError(f'{owner}: metainfo classes is empty; list at least one class name')

    def name_ok(c) -> bool:
        return isinstance(c, str) and bool(c.strip())

    bad = [c for c in classes if not name_ok(c) and not (
        synonyms and isinstance(c, tuple) and c and all(name_ok(s) for s in c))]
    if bad:
        kind = ('non-empty strings or non-empty lists of them (synonyms)'
                if synonyms else 'non-empty strings')
        raise ValueError(f'{owner}: class names must be {kind}, got {bad[:5]!r}')
    seen, dups = set(), []
    for c in classes:
        if c in seen:
            dups.append(c)
        seen.add(c)
    if dups:
        raise ValueError(f'{owner}: class names must be unique; repeated: '
                         f'{sorted(set(dups), key=str)!r}')
    return classes


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Validate a string option against its allowed values."""
    if value not in choices:
        raise ValueError(f'{name} must be one of {tuple(choices)!r}, got {value!r}')
    return value


def image_suffixes(suffix, name: str = 'img_suffix') -> Tuple[str, ...]:
    """A dataset's image extension(s) (a string, list or tuple) as a tuple.

    Raises:
        ValueError: Naming ``name`` when ``suffix`` is neither.
    """
    suffixes = (suffix, ) if isinstance(suffix, str) else suffix
    if (not isinstance(suffixes, (list, tuple)) or not suffixes
            or not all(isinstance(s, str) and s for s in suffixes)):
        raise ValueError(f"{name} must be an extension such as '.jpg' or a list of them such "
                         f"as ['.jpg', '.png'], got {suffix!r}")
    return tuple(suffixes)


def locate_image(folder: str, img_id: str, suffixes: Sequence[str]) -> str:
    """``folder/<img_id><suffix>`` for the first existing suffix, else the first suffix."""
    candidates = [osp.join(folder, img_id + s) for s in suffixes]
    return next((p for p in candidates if osp.isfile(p)), candidates[0])


def join_root(data_root: Optional[str], path: str) -> str:
    """``path`` joined to ``data_root`` unless it is absolute (mmengine's rule)."""
    if path and data_root and not osp.isabs(path):
        return osp.join(data_root, path)
    return path


def list_images(folder: str, suffixes: Sequence[str] = IMG_EXTENSIONS,
                recursive: bool = True) -> List[str]:
    """Image files in ``folder``, sorted: the one folder scan of the package.

    Hidden files and folders are ignored and symlinked sub-folders not
    followed (a link loop would never end); symlinked files are kept.

    Args:
        folder (str): The folder.
        suffixes (Sequence[str]): Extensions to pick up.
        recursive (bool): Also scan sub-folders (datasets); the inferencer
            takes a folder's own files only.

    Raises:
        FileNotFoundError: ``folder`` is not a directory or holds no image.
    """
    if not osp.isdir(folder):
        raise FileNotFoundError(f'image folder {folder!r} does not exist or is not a directory')
    suffixes = tuple(s.lower() for s in suffixes)
    paths: List[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.')) if recursive else []
        paths.extend(osp.join(root, name) for name in sorted(files)
                     if not name.startswith('.') and name.lower().endswith(suffixes))
    if not paths:
        raise FileNotFoundError(f'no image files ({", ".join(suffixes)}) in folder {folder!r} '
                                '(hidden files are ignored)')
    return paths


def scan_images(folder: str, suffixes: Sequence[str] = IMG_EXTENSIONS) -> Dict[str, str]:
    """Images under ``folder`` (:func:`list_images`, recursive), keyed by image id.

    The id is the ``/``-separated path relative to ``folder`` without its
    extension; sorted by id.

    Raises:
        FileNotFoundError: ``folder`` is not a directory, or holds no file
            with one of ``suffixes`` (a dataset without images would fail
            later, inside mmengine, without naming the folder).
        ValueError: Two files share an id (``a.jpg`` and ``a.png``).
    """
    try:
        paths = list_images(folder, suffixes)
    except FileNotFoundError as e:
        if not osp.isdir(folder):
            raise
        raise FileNotFoundError(f'{e}; check data_root and data_prefix, or the '
                                'extensions/img_suffix of the dataset') from None
    suffixes = tuple(s.lower() for s in suffixes)
    found: Dict[str, str] = {}
    clashes: List[Tuple[str, str]] = []
    for path in paths:
        rel = osp.relpath(path, folder).replace(os.sep, '/')
        img_id = rel[:len(rel) - len(_matched_suffix(rel, suffixes))]
        if img_id in found:
            clashes.append((found[img_id], path))
        found[img_id] = path
    if clashes:
        raise ValueError(f'{len(clashes)} images in {folder!r} share an id (same name, different '
                         f'extension), e.g. {clashes[0]}; rename or remove one of each pair')
    return dict(sorted(found.items()))


def _matched_suffix(name: str, suffixes: Sequence[str]) -> str:
    lower = name.lower()
    return max((s for s in suffixes if lower.endswith(s)), key=len)


def report_missing(missing: Sequence[str], what: str, on_missing: str, owner: str) -> int:
    """Skip (with a warning) or raise for entries whose files do not exist.

    Args:
        missing (Sequence[str]): The ids or paths that are missing.
        what (str): What they are, e.g. ``'ids in the label file have no image'``.
        on_missing (str): ``'skip'`` or ``'raise'``.
        owner (str): The dataset's name, for the message.

    Returns:
        int: How many were skipped.

    Raises:
        FileNotFoundError: When ``on_missing='raise'`` and any are missing.
    """
    if not missing:
        return 0
    msg = f'{owner}: {len(missing)} {what}, e.g. {list(missing[:5])}'
    if on_missing == 'raise':
        raise FileNotFoundError(f"{msg}. Fix the paths, or pass on_missing='skip' to skip them")
    print_log(f'{msg}; skipped', logger='current', level=logging.WARNING)
    return len(missing)
