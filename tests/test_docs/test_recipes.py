"""Every ``python`` / ``bash`` / ``shell`` block of README.md and docs/*.md runs.

The blocks are found by scanning the files, so a new one is picked up without
listing it here. An HTML comment on the line right before a fence says how a
block runs::

    (none)                         run it
    <!-- recipe: slow -->          run it; the test is marked slow (every block
                                   that is not a config file is: it runs in a
                                   fresh interpreter)
    <!-- recipe: parse -->         tool commands (``python tools/x.py ...``) only
                                   parse their arguments and build their config
                                   (``recipe_dry_run.py`` here): for datasets
                                   that the suite does not have
    <!-- recipe: skip (reason) --> not run; the reason is required (installs,
                                   the suite itself, GPUs, clusters, hours)

(``parse, slow`` combines.) A python block whose first line is a comment
naming a ``.py`` file under ``configs/`` (``# configs/tagclip/my_tagging.py``)
is that file: it is written into the sandbox before its document's blocks
run, and running it loads it with mmengine's ``Config``.

The blocks of one document run in order, in one sandbox shared by all
documents: a folder holding a copy of ``configs/``, links to ``tools/`` and
``demo/``, and tiny data in the documented layouts (:func:`_sandbox`). A
block's test first runs the earlier runnable blocks of its document that have
not run yet, since a recipe may use an earlier one's output. The
substitutions are these, and only these:

* ``HOME`` is the sandbox's ``home/``, whose ``~/.cache/clip/ViT-B-16.pt`` is
  a random CLIP with ViT-B/16's layout at a fraction of its width
  (``NARROW_CLIP_ARCH``), so configs run unchanged;
* no GPU: ``CUDA_VISIBLE_DEVICES=''`` and the text :data:`SUBSTITUTIONS`
  (``device='cuda'`` becomes ``'cpu'``; the placeholder
  ``/path/to/ViT-B-16.pt`` becomes the checkpoint above);
* ``python`` in a shell block is this interpreter, with the repository on
  ``PYTHONPATH``.
"""
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import pytest
from PIL import Image

from tagclip_mmseg.testing.checkout import repo_root, tool_env
from tagclip_mmseg.testing.images import FOLDER_IDS, write_folder_images

REPO = repo_root(__file__)
DRY_RUN = osp.join(REPO, 'tests', 'test_docs', 'recipe_dry_run.py')

#: The documents whose blocks run: README.md and every docs/*.md.
DOCUMENTS = ['README.md'] + sorted(
    osp.join('docs', name) for name in os.listdir(osp.join(REPO, 'docs')) if name.endswith('.md'))

#: Fence languages that are recipes; other fences (diagrams, logs) are text.
LANGUAGES = {'python': 'python', 'py': 'python', 'bash': 'shell', 'sh': 'shell',
             'shell': 'shell', 'console': 'shell'}

#: Text replaced in every block before it runs: (old, new), ``{checkpoint}``
#: standing for the sandbox's CLIP file.
SUBSTITUTIONS = (
    ("device='cuda'", "device='cpu'"),  # no GPU in the suite
    ('/path/to/ViT-B-16.pt', '{checkpoint}'),  # the placeholder of the CLIP file
)

MARKER = re.compile(r'^\s*<!--\s*recipe:\s*(?P<options>[a-z, ]+?)\s*(?:\((?P<reason>.+)\))?\s*-->'
                    r'\s*$')
MARKER_START = re.compile(r'^\s*<!--\s*recipe\b')
FENCE = re.compile(r'^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)')
CONFIG_FILE = re.compile(r'^#\s*(?P<path>configs/[\w./-]+\.py)\s*$')
OPTIONS = {'skip', 'slow', 'parse'}

#: Seconds a block may run.
BLOCK_TIMEOUT = 900


@dataclass(frozen=True)
class Block:
    """A fenced recipe of a document."""
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str  # 'python' or 'shell'
    code: str
    options: frozenset
    reason: Optional[str]

    @property
    def name(self) -> str:
        return f'{self.doc}:{self.line}'

    @property
    def config_file(self) -> Optional[str]:
        """The ``configs/...py`` file this block is, if it names one."""
        if self.lang != 'python':
            return None
        first = self.code.split('\n', 1)[0]
        match = CONFIG_FILE.match(first)
        return match.group('path') if match else None


def extract_blocks(doc: str, text: str) -> Tuple[List[Block], List[str]]:
    """The recipe blocks of a document, and the problems with its markers."""
    blocks, problems = [], []
    lines = text.split('\n')
    pending: Optional[Tuple[int, str]] = None  # (line, marker text) before a fence
    i = 0
    while i < len(lines):
        line = lines[i]
        match = FENCE.match(line)
        if not match:
            if MARKER_START.match(line):
                if pending is not None:
                    problems.append(f'{doc}:{pending[0]}: recipe marker not followed by a fence')
                pending = (i + 1, line)
            elif line.strip() and pending is not None:
                problems.append(f'{doc}:{pending[0]}: recipe marker not followed by a fence')
                pending = None
            i += 1
            continue
        indent, fence, lang = match.group('indent'), match.group('fence'), match.group('lang')
        start = i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and not lines[i].strip().strip(fence[0])):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # the closing fence
        options, reason = frozenset(), None
        if pending is not None:
            marker = MARKER.match(pending[1])
            if marker is None:
                problems.append(f'{doc}:{pending[0]}: unreadable recipe marker {pending[1]!r}; '
                                'write <!-- recipe: skip (reason) -->, parse or slow')
            else:
                options = frozenset(o.strip() for o in marker.group('options').split(','))
                reason = marker.group('reason')
                unknown = options - OPTIONS
                if unknown:
                    problems.append(f'{doc}:{pending[0]}: unknown recipe option(s) '
                                    f'{sorted(unknown)}; known: {sorted(OPTIONS)}')
                if 'skip' in options and not reason:
                    problems.append(f'{doc}:{pending[0]}: a skipped recipe needs its reason: '
                                    '<!-- recipe: skip (why) -->')
            pending = None
        kind = LANGUAGES.get(lang.lower())
        if kind is None:
            if options:
                problems.append(f'{doc}:{start + 1}: recipe marker on a {lang or "plain"!r} '
                                'block, which is not run')
            continue
        blocks.append(Block(doc, start + 1, kind, '\n'.join(body) + '\n', options, reason))
    if pending is not None:
        problems.append(f'{doc}:{pending[0]}: recipe marker not followed by a fence')
    return blocks, problems


def _read(doc: str) -> str:
    with open(osp.join(REPO, doc), encoding='utf-8') as f:
        return f.read()


def all_blocks() -> Dict[str, List[Block]]:
    return {doc: extract_blocks(doc, _read(doc))[0] for doc in DOCUMENTS}


# ------------------------------------------------------------------ sandbox
def _write_photos(folder: str, names: List[str]) -> None:
    """Small copies (128x96) of the suite's real photos."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    src = osp.join(REPO, 'tests', 'data', 'real_images', 'images')
    photos = sorted(p for p in os.listdir(src) if p.endswith('.jpg'))
    for name, photo in zip(names, photos):
        with Image.open(osp.join(src, photo)) as im:
            im.convert('RGB').resize((128, 96)).save(osp.join(folder, name + '.jpg'))


def _write_coco_annotations(root: str) -> None:
    """``annotations/instances_<split>.json`` of two images, one instance each.

    For the splits the COCO-object converter recipe names.
    """
    from tagclip_mmseg.utils import COCO_CATEGORY_IDS, COCO_CLASSES
    categories = [dict(id=i, name=n) for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    for split in ('val2017', 'train2014', 'val2014'):
        images = [dict(id=k, file_name=f'{k:012d}.jpg', height=12, width=16) for k in (1, 2)]
        annotations = [dict(id=10 + k, image_id=k, category_id=COCO_CATEGORY_IDS[k], iscrowd=0,
                            area=24., bbox=[2, 2, 6, 4],
                            segmentation=[[2, 2, 8, 2, 8, 6, 2, 6]]) for k in (1, 2)]
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)


def _write_stuffthingmaps(root: str) -> None:
    """COCO-Stuff 164k's layout.

    ``images/val2017/<id>.jpg`` and its stuffthingmap ``annotations/val2017/<id>.png`` (0 person,
    100 a stuff class, 255 unlabeled), for two images.
    """
    import numpy as np
    from PIL import Image
    ids = ['000000000001', '000000000002']
    _write_photos(osp.join(root, 'images', 'val2017'), ids)
    os.makedirs(osp.join(root, 'annotations', 'val2017'))
    stuffthingmap = np.full((96, 128), 100, np.uint8)
    stuffthingmap[10:40, 20:60] = 0
    stuffthingmap[:, :4] = 255
    for img_id in ids:
        Image.fromarray(stuffthingmap).save(osp.join(root, 'annotations', 'val2017',
                                                     img_id + '.png'))


def _sandbox(root: str) -> Dict[str, str]:
    """Build the sandbox in ``root``; return the environment its blocks run in.

    Data, in the layouts the documents use: ``data/my_photos`` (3 photos and a
    ``labels.txt`` over docs/add_dataset.md's 3 classes), ``data/my photos``
    (a link to it), ``my_photos/`` (README's quick start) and
    ``data/coco/annotations`` (tiny instance files) and ``data/coco_stuff164k``
    (two images and their stuffthingmaps).
    """
    from tagclip_mmseg.models.clip.random_clip import NARROW_CLIP_ARCH, random_clip
    home = osp.join(root, 'home')
    checkpoint = osp.join(home, '.cache', 'clip', 'ViT-B-16.pt')
    os.makedirs(osp.dirname(checkpoint))
    random_clip(0, checkpoint, **NARROW_CLIP_ARCH)
    shutil.copytree(osp.join(REPO, 'configs'), osp.join(root, 'configs'))
    for name in ('tools', 'demo'):
        os.symlink(osp.join(REPO, name), osp.join(root, name))
    ids = ['desk', 'office', 'street']
    _write_photos(osp.join(root, 'data', 'my_photos'), ids)
    with open(osp.join(root, 'data', 'my_photos', 'labels.txt'), 'w') as f:
        f.write('desk 0 1\noffice 1 2\nstreet 2\n')
    os.symlink('my_photos', osp.join(root, 'data', 'my photos'))
    _write_photos(osp.join(root, 'my_photos'), ids)
    _write_coco_annotations(osp.join(root, 'data', 'coco'))
    _write_stuffthingmaps(osp.join(root, 'data', 'coco_stuff164k'))
    env = tool_env(REPO, HOME=home, RECIPE_PYTHON=sys.executable, RECIPE_CHECKPOINT=checkpoint)
    for var in ('TAGCLIP_MMSEG_CACHE', 'PORT'):
        env.pop(var, None)
    return env


class Sandbox:
    """The shared sandbox and which blocks of each document have run."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.env = _sandbox(root)
        self.blocks = all_blocks()
        self.ran: Dict[str, int] = {}  # doc -> number of its blocks handled, in order
        self.failed: Dict[str, str] = {}  # block name -> why
        for blocks in self.blocks.values():
            for block in blocks:
                if block.config_file:
                    path = osp.join(root, block.config_file)
                    os.makedirs(osp.dirname(path), exist_ok=True)
                    with open(path, 'w', encoding='utf-8') as f:
                        f.write(block.code)

    def substitute(self, code: str) -> str:
        for old, new in SUBSTITUTIONS:
            code = code.replace(old, new.format(checkpoint=self.env['RECIPE_CHECKPOINT']))
        return code

    def run_upto(self, block: Block) -> None:
        """Run ``block``, after the earlier blocks of its document."""
        blocks = self.blocks[block.doc]
        index = blocks.index(block)
        for earlier in blocks[self.ran.get(block.doc, 0):index]:
            self._run_once(earlier)
            if earlier.name in self.failed:
                pytest.fail(f'{block.name} needs the earlier recipe {earlier.name}, which failed')
        self._run_once(block)
        if block.name in self.failed:
            pytest.fail(self.failed[block.name])

    def _run_once(self, block: Block) -> None:
        blocks = self.blocks[block.doc]
        if blocks.index(block) < self.ran.get(block.doc, 0):
            return
        self.ran[block.doc] = blocks.index(block) + 1
        if 'skip' in block.options:
            return
        try:
            self._run(block)
        except AssertionError as e:
            self.failed[block.name] = str(e)

    def _run(self, block: Block) -> None:
        if block.config_file:
            from mmengine.config import Config
            cfg = Config.fromfile(osp.join(self.root, block.config_file))
            assert cfg.get('model') or cfg.get('train_dataloader') or cfg.get('test_dataloader'), \
                f'{block.name}: {block.config_file} has no model or dataloader'
            return
        code = self.substitute(block.code)
        scripts = osp.join(self.root, '.recipes')
        os.makedirs(scripts, exist_ok=True)
        stem = osp.join(scripts, block.name.replace('/', '_').replace(':', '_'))
        if block.lang == 'python':
            with open(stem + '.py', 'w', encoding='utf-8') as f:
                f.write(code)
            cmd = [sys.executable, stem + '.py']
        else:
            wrapper = ' "$RECIPE_DRY_RUN"' if 'parse' in block.options else ''
            prelude = (f'python() {{ "$RECIPE_PYTHON"{wrapper} "$@"; }}\n'
                       'python3() { python "$@"; }\n')
            with open(stem + '.sh', 'w', encoding='utf-8') as f:
                f.write(prelude + code)
            cmd = ['bash', '-e', '-o', 'pipefail', stem + '.sh']
        env = dict(self.env, RECIPE_DRY_RUN=DRY_RUN)
        try:
            proc = subprocess.run(cmd, cwd=self.root, env=env, capture_output=True, text=True,
                                  timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f'{block.name}: the recipe ran over {BLOCK_TIMEOUT} s') from None
        assert proc.returncode == 0, (
            f'{block.name}: the recipe failed (exit {proc.returncode}):\n{code}\n'
            f'--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}')


@pytest.fixture(scope='module')
def sandbox(tmp_path_factory):
    return Sandbox(str(tmp_path_factory.mktemp('recipes')))


def _params():
    params = []
    for doc, blocks in all_blocks().items():
        for block in blocks:
            # A block in its own interpreter imports the whole stack (15-60 s on a
            # small CI machine) before it starts: slow. Config files load here.
            slow = 'slow' in block.options or not block.config_file
            marks = [pytest.mark.slow] if slow else []
            params.append(pytest.param(block, id=block.name, marks=marks))
    return params


def test_every_block_is_found_and_marked_properly():
    """Markers parse, carry a reason when they skip, and sit on a recipe fence."""
    problems = []
    for doc in DOCUMENTS:
        problems += extract_blocks(doc, _read(doc))[1]
    assert not problems, '\n'.join(problems)
    blocks = [b for bs in all_blocks().values() for b in bs]
    assert any(b.doc == 'README.md' for b in blocks) and any(b.config_file for b in blocks)


def test_extractor_on_a_made_up_document():
    text = '\n'.join([
        'text', '```python', 'print(1)', '```', '',
        '<!-- recipe: skip (needs a cluster) -->', '```bash', 'srun x', '```',
        '<!-- recipe: parse, slow -->', '  ```shell', '  python tools/test.py C', '  ```',
        '```text', 'not run', '```', '```', 'plain', '```',
        '<!-- recipe: skip -->', '```sh', 'x', '```',
        '<!-- recipe: fast -->', '```py', 'y', '```',
        '<!-- recipe: slow -->', 'words', '```python', 'z', '```'])
    blocks, problems = extract_blocks('doc.md', text)
    assert [(b.line, b.lang, b.code, sorted(b.options), b.reason) for b in blocks] == [
        (2, 'python', 'print(1)\n', [], None),
        (7, 'shell', 'srun x\n', ['skip'], 'needs a cluster'),
        (11, 'shell', 'python tools/test.py C\n', ['parse', 'slow'], None),
        (21, 'shell', 'x\n', ['skip'], None),
        (25, 'python', 'y\n', ['fast'], None),
        (30, 'python', 'z\n', [], None),
    ]
    assert problems == [
        'doc.md:20: a skipped recipe needs its reason: <!-- recipe: skip (why) -->',
        "doc.md:24: unknown recipe option(s) ['fast']; known: ['parse', 'skip', 'slow']",
        'doc.md:28: recipe marker not followed by a fence']


@pytest.mark.parametrize('block', _params())
def test_recipe(sandbox, block):
    if 'skip' in block.options:
        assert block.reason  # checked above; a skipped block is not run by design
        return
    sandbox.run_upto(block)


def doc_config(section: str) -> str:
    """The first python block after ``section`` in docs/add_dataset.md."""
    with open(osp.join(REPO, 'docs', 'add_dataset.md'), encoding='utf-8') as f:
        text = f.read()
    after = text[text.index(section):]
    return re.search(r'```python\n(.*?)```', after, re.S).group(1)


def test_documented_custom_dataset_recipe_runs_as_written(tmp_path, tiny_tool_options,
                                                          tool_runner):
    # The config exactly as documented, in a configs/<folder>/ next to the
    # repository's configs (linked), so that its relative _base_ resolves.
    configs = tmp_path / 'configs'
    configs.mkdir()
    for name in os.listdir(osp.join(REPO, 'configs')):
        os.symlink(osp.join(REPO, 'configs', name), configs / name)
    (configs / 'custom').mkdir()
    config = configs / 'custom' / 'my_photos.py'
    config.write_text(doc_config('## Pseudo masks for your images'))
    photos = tmp_path / 'my photos'
    write_folder_images(photos)
    tags = tmp_path / 'tags.txt'
    tags.write_text('apple 0\nboat 1 2\ncloud\ndune 2\n')
    out = tmp_path / 'pseudo'
    tool_runner.inprocess(
        'tools/generate_pseudo_labels.py', str(config), '--data-root', str(photos), '--tags',
        str(tags), '--out', str(out), '--cfg-options', *tiny_tool_options['pl'])
    assert sorted(p.stem for p in out.glob('*.png')) == sorted(FOLDER_IDS)
    for img_id in FOLDER_IDS:
        with Image.open(photos / f'{img_id}.jpg') as img, Image.open(out / f'{img_id}.png') as m:
            assert m.size == img.size
    assert json.loads((out / 'summary.json').read_text())['failed'] == 0
