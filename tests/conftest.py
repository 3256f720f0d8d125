"""Shared fixtures: tiny random CLIPs that every test can afford on a CPU.

No test downloads anything; checkpoints are built here with random weights.
"""
import contextlib
import os
import os.path as osp

import numpy as np
import pytest

from tagclip_mmseg.testing import skip_policy
from tagclip_mmseg.testing.checkout import repo_root, tool_env

# No test may reach the internet: a missing default checkpoint would otherwise
# be fetched from OpenAI. Set before any tool starts, so subprocesses inherit
# it; the fetch tests lift it for their loopback server only.
os.environ['TAGCLIP_MMSEG_OFFLINE'] = '1'

#: Repository root of this checkout: the tools resolve configs relative to it,
#: and a fresh interpreter imports ``tagclip_mmseg`` from it (:func:`tool_env`).
REPO_ROOT = repo_root(__file__)


# ``--strict-skips``: fail the session on a skip other than "no CUDA" or "root".
pytest_addoption = skip_policy.pytest_addoption
pytest_configure = skip_policy.pytest_configure

#: Real photos (and one VOC mask) that ship with the tests; see
#: ``tests/data/SOURCES.md`` for their origin and licences.
REAL_IMAGES = osp.join(REPO_ROOT, 'tests', 'data', 'real_images')

#: The first photos of :data:`REAL_IMAGES` in name order, 128x128 ImageNet
#: samples: tests that need "a few real photos" take them from here by name, so
#: that adding a file to the folder changes no test.
FOOLBOX_PHOTOS = ('foolbox_imagenet_00_243.jpg', 'foolbox_imagenet_01_559.jpg',
                  'foolbox_imagenet_02_438.jpg', 'foolbox_imagenet_03_990.jpg',
                  'foolbox_imagenet_04_949.jpg', 'foolbox_imagenet_05_853.jpg',
                  'foolbox_imagenet_06_609.jpg', 'foolbox_imagenet_07_609.jpg')

def make_tiny_clip(seed: int = 0, path=None, **overrides):
    """A tiny random CLIP in OpenAI naming (fp32, eval mode), saved to ``path`` when given.

    Every parameter is perturbed so that round-trip tests would notice one that failed to load.
    """
    from tagclip_mmseg.models.clip.random_clip import TINY_CLIP_ARCH, random_clip
    return random_clip(seed, path, jitter=0.02, **{**TINY_CLIP_ARCH, **overrides})


@pytest.fixture
def tiny_clip():
    return make_tiny_clip()


@pytest.fixture
def tiny_clip_path(tmp_path):
    """A plain state_dict checkpoint with the weights of :func:`tiny_clip` (same seed)."""
    path = str(tmp_path / 'tiny_clip.pth')
    make_tiny_clip(path=path)
    return path


@pytest.fixture(scope='session')
def real_images_dir():
    """``tests/data/real_images`` (``images/``, ``masks/``).

    Part of the repository, so a missing folder is an error, never a skip.
    """
    assert osp.isdir(osp.join(REAL_IMAGES, 'images')), (
        f'{REAL_IMAGES} is missing: it ships with the repository (tests/data/)')
    return REAL_IMAGES


@pytest.fixture(scope='session')
def real_photo_paths(real_images_dir):
    """Paths of :data:`FOOLBOX_PHOTOS`, eight small real photos in a fixed order."""
    return [osp.join(real_images_dir, 'images', name) for name in FOOLBOX_PHOTOS]


#: (width, height) of the photos in :func:`tiny_pseudo_seg_data`; mixed sizes
#: exercise padding and batching.
TINY_SEG_SIZES = ((64, 48), (56, 64), (72, 40), (48, 48), (60, 52), (40, 56))


def _blob_mask(rng, height: int, width: int, num_classes: int):
    """Background, two random class rectangles and an ignored (255) band."""
    import numpy as np
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(2):
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        y1, x1 = y0 + rng.integers(8, height // 2 + 8), x0 + rng.integers(8, width // 2 + 8)
        mask[y0:y1, x0:x1] = rng.integers(1, num_classes)
    band = rng.integers(0, height - 4)
    mask[band:band + 4] = 255
    return mask


@pytest.fixture(scope='session')
def tiny_pseudo_seg_data(tmp_path_factory, real_photo_paths):
    """A few real photos in the VOC 2012 and COCO layouts, with fake masks.

    The same six images (ids ``img0``..``img5``) serve as train and val.
    Pseudo masks (random class blobs with a 255 band) sit in their own
    folders, like the output of ``tools/generate_pseudo_labels.py``; the
    "real" val masks are other random blobs.

    Returns:
        dict: ``voc_root`` (``.../VOC2012``), ``voc_pseudo``, ``coco_root``
        (``.../coco``: train2014, val2017), ``coco_pseudo`` and ``ids``.
    """
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp('pseudo_seg')
    photos = real_photo_paths[:len(TINY_SEG_SIZES)]
    ids = [f'img{i}' for i in range(len(photos))]
    rng = np.random.default_rng(0)
    voc, coco = root / 'VOC2012', root / 'coco'
    folders = dict(voc_img=voc / 'JPEGImages', voc_gt=voc / 'SegmentationClass',
                   voc_pseudo=root / 'pseudo_voc', voc_sets=voc / 'ImageSets' / 'Segmentation',
                   coco_train=coco / 'train2014', coco_val=coco / 'val2017',
                   coco_gt=coco / 'SegmentationClass' / 'val2017', coco_pseudo=root / 'pseudo_coco')
    for folder in folders.values():
        folder.mkdir(parents=True)
    for img_id, photo, (w, h) in zip(ids, photos, TINY_SEG_SIZES):
        with Image.open(photo) as im:
            im = im.convert('RGB').resize((w, h), Image.BILINEAR)
            for key in ('voc_img', 'coco_train', 'coco_val'):
                im.save(folders[key] / f'{img_id}.jpg', quality=90)
        for key, classes in (('voc_gt', 21), ('voc_pseudo', 21), ('coco_gt', 81),
                             ('coco_pseudo', 81)):
            Image.fromarray(_blob_mask(rng, h, w, classes)).save(folders[key] / f'{img_id}.png')
    id_list = ''.join(i + '\n' for i in ids)
    for path in (folders['voc_sets'] / 'trainaug.txt', folders['voc_sets'] / 'val.txt',
                 coco / 'train2014_ids.txt', coco / 'val2017_ids.txt'):
        path.write_text(id_list)
    return dict(voc_root=str(voc), voc_pseudo=str(folders['voc_pseudo']), coco_root=str(coco),
                coco_pseudo=str(folders['coco_pseudo']), ids=ids)


@pytest.fixture(scope='session')
def deep_tiny_clip_path(tmp_path_factory):
    """A tiny CLIP with ViT-B/16's 12 vision layers, saved as a state dict.

    Default configs index layers 4-10 (``avg_layers``, ``caa_layers``); this
    narrow but deep model lets tests run those defaults unchanged.
    """
    path = str(tmp_path_factory.mktemp('deep_tiny_clip') / 'deep_tiny_clip.pth')
    make_tiny_clip(path=path, vision_layers=12)
    return path


@pytest.fixture(scope='session')
def tiny_clip_factory():
    """:func:`make_tiny_clip`, for tests that need several different tiny CLIPs."""
    return make_tiny_clip



# ------------------------------------------------------- tools, end to end


def _manager_classes():
    """Every class with an mmengine global-instance registry (ManagerMixin)."""
    from mmengine.utils import ManagerMixin
    classes, todo = [], [ManagerMixin]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo.extend(cls.__subclasses__())
    return [c for c in classes if '_instance_dict' in vars(c)]


@contextlib.contextmanager
def own_mmengine_instances():
    """Drop the mmengine objects made inside the block when it ends.

    Visualizers, loggers, message hubs and scopes go, as they would with a process of their own.

    They live in global registries keyed by name: mmseg's runtime names every
    visualizer ``'visualizer'``, so without this a second Runner in one
    process reuses the first one's visualizer and its ``save_dir``.
    """
    before = {cls: set(cls._instance_dict) for cls in _manager_classes()}
    try:
        yield
    finally:
        for cls in _manager_classes():
            for name in set(cls._instance_dict) - before.get(cls, set()):
                cls._instance_dict.pop(name, None)


@pytest.fixture(autouse=True)
def _own_mmengine_instances():
    """Every test leaves mmengine's global instances as it found them."""
    with own_mmengine_instances():
        yield


class ToolRunner:
    """Run ``tools/*.py`` as a user would, in a fresh interpreter or in this one.

    A fresh interpreter is the real thing (and the only way to kill a run or
    measure its memory) but costs ~15 s of imports on a small CI machine; the
    in-process form runs the same ``__main__`` code in a second or two and
    lets the caller catch the exception a failing tool raises.
    """

    @staticmethod
    def command(script, *args, peak_rss=False, nproc=1):
        """The argv of a fresh-interpreter run.

        With ``peak_rss``, the tool runs under a wrapper that prints the
        process's high-water mark after importing the stack the tools import
        (``BASE_RSS_KB <kb>``, ~1 GB, most of it mmseg's model zoo) and at exit
        (``PEAK_RSS_KB <kb>``); their difference is what the run itself used.
        With ``nproc > 1``, torchrun starts that many CPU processes
        (``--launcher pytorch``, gloo) on a free port.
        """
        import socket
        import sys
        if nproc > 1:
            with socket.socket() as sock:
                sock.bind(('127.0.0.1', 0))
                port = sock.getsockname()[1]
            return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node',
                    str(nproc), '--master_port', str(port), script, *args, '--launcher',
                    'pytorch']
        if not peak_rss:
            return [sys.executable, script, *args]
        wrapper = ('import atexit, resource, runpy, sys; '
                   'import mmengine.runner, mmseg.models, tagclip_mmseg; '
                   'peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; '
                   'print("BASE_RSS_KB", peak(), file=sys.stderr, flush=True); '
                   'atexit.register(lambda: print("PEAK_RSS_KB", peak(), file=sys.stderr, '
                   'flush=True)); '
                   'sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")')
        return [sys.executable, '-c', wrapper, script, *args]

    @staticmethod
    def env(**overrides):
        """:func:`tool_env` of this checkout.

        Its code first on ``PYTHONPATH``, CPU only, one thread per process, unbuffered output.
        """
        return tool_env(REPO_ROOT, **overrides)

    def subprocess(self, script, *args, check=True, timeout=600, peak_rss=False, nproc=1):
        """Run in a fresh interpreter; return the CompletedProcess (text output)."""
        import subprocess
        proc = subprocess.run(self.command(script, *args, peak_rss=peak_rss, nproc=nproc),
                              cwd=REPO_ROOT, env=self.env(), capture_output=True, text=True,
                              timeout=timeout)
        if check:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    def popen(self, script, *args, **kwargs):
        """Start a fresh-interpreter run (e.g. to kill it); ``kwargs`` go to Popen."""
        import subprocess
        return subprocess.Popen(self.command(script, *args), cwd=REPO_ROOT, env=self.env(),
                                **kwargs)

    @staticmethod
    def kill_seed() -> int:
        """Seed of a random kill point: ``$RELIABILITY_KILL_SEED`` reproduces one."""
        import random
        return int(os.environ.get('RELIABILITY_KILL_SEED')
                   or random.SystemRandom().randrange(2**31))

    @staticmethod
    def kill_when(proc, ready, timeout: float = 300.) -> None:
        """SIGKILL ``proc`` as soon as ``ready()`` returns True.

        ``ready`` is polled every 5 ms while the run lives (at most
        ``timeout`` s) and may assert on the run's intermediate state. The
        process is reaped in every case; the caller checks ``returncode``
        (``-SIGKILL`` when the kill landed before the run ended by itself).
        """
        import signal
        import time
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if ready():
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.005)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def inprocess(self, script, *args):
        """Run the tool's ``__main__`` here; whatever it raises propagates.

        The mmengine instances the run creates end with it
        (:func:`own_mmengine_instances`).
        """
        import runpy
        import sys
        with own_mmengine_instances(), pytest.MonkeyPatch.context() as mp:
            mp.chdir(REPO_ROOT)
            mp.setattr(sys, 'argv', [script, *args])
            mp.setenv('LOCAL_RANK', '0')
            runpy.run_path(osp.join(REPO_ROOT, script), run_name='__main__')


@pytest.fixture(scope='session')
def tool_runner():
    """A :class:`ToolRunner` fixture.

    Its modes: ``subprocess``, ``popen``, ``inprocess``, ``kill_when``, ``kill_seed``.

    Test modules cannot import conftest (``--import-mode=importlib``), hence a
    fixture.
    """
    return ToolRunner()


@pytest.fixture(scope='session')
def tiny_tool_options(tmp_path_factory):
    """``--cfg-options`` that shrink the real tagging and pseudo-label configs.

    A session-wide tiny CLIP checkpoint and text cache; ``'tag'`` and ``'pl'``
    add the layer indices that a 3-layer ViT has (see
    ``test_e2e_training_free.py``).
    """
    root = tmp_path_factory.mktemp('tiny_tools')
    checkpoint = root / 'tiny_clip.pth'
    make_tiny_clip(path=checkpoint)
    common = [f'model.clip.checkpoint={checkpoint}', 'model.clip.dtype=fp32',
              f'model.text_cache_dir={root / "text_cache"}', 'test_dataloader.num_workers=0',
              "model.templates=['a photo of a {}.']"]
    return dict(checkpoint=str(checkpoint),
                tag=common + ['model.avg_layers=[0,1]', 'model.vote_k=2',
                              'model.cwr_crop_size=64'],
                pl=common + ['model.caa_layers=[0,1,2]'])


@pytest.fixture(scope='session')
def pl_list_config(tmp_path_factory):
    """A pseudo-label config for a list of images without ground truth.

    The real VOC config (``configs/pseudo_labelers/clip-es_vit-b16_voc12-val_
    tagclip-tags.py``) without GT masks (no ``seg_map_path``; the pipeline's
    ``LoadOptionalAnnotations`` then loads nothing) and the mIoU metric: images
    ``<data_root>/JPEGImages/<id>.jpg`` for the ids of ``ann_file`` (or every
    ``.jpg`` there without one), tags from ``--tags``, masks from the writer.
    """
    path = tmp_path_factory.mktemp('pl_config') / 'clip-es_list_no-gt.py'
    base = osp.join(REPO_ROOT, 'configs', 'pseudo_labelers',
                    'clip-es_vit-b16_voc12-val_tagclip-tags.py')
    path.write_text(
        f'_base_ = [{base!r}]\n'
        'test_dataloader = dict(dataset=dict(\n'
        "    ann_file='', data_prefix=dict(_delete_=True, img_path='JPEGImages')))\n"
        "test_evaluator = [dict(type='PseudoLabelWriter', out_dir=_base_.pseudo_label_dir)]\n")
    return str(path)


def _scores_records(data: bytes) -> dict:
    import json
    records = {}
    for line in data.decode('utf-8').splitlines():
        if line.strip():
            r = json.loads(line)
            records[r['img_id']] = (r['scores'], r['tags'])
    return records


def assert_tag_files_agree(actual: dict, expected: dict, tag_ratio: float) -> None:
    """Two tagging runs' files agree under the determinism contract.

    ``actual``/``expected`` map file names (``tags.txt``, ``scores.jsonl``,
    ``tags.skipped.txt``) to bytes. The skipped list is exact; scores and
    tags follow :func:`tagclip_mmseg.evaluation.determinism.compare_tag_scores`
    (docs/determinism.md); each run's ``tags.txt`` lists exactly the images
    and tags of its own ``scores.jsonl``.
    """
    from tagclip_mmseg.evaluation.determinism import compare_tag_scores
    assert actual['tags.skipped.txt'] == expected['tags.skipped.txt']
    runs = []
    for files in (actual, expected):
        records = _scores_records(files['scores.jsonl'])
        listed = [line.split() for line in files['tags.txt'].decode('utf-8').splitlines()]
        assert [(r[0], sorted(map(int, r[1:]))) for r in listed] == [
            (k, sorted(v[1])) for k, v in records.items()]
        runs.append(records)
    problems = compare_tag_scores(runs[0], runs[1], tag_ratio)
    assert not problems, problems


@pytest.fixture(scope='session')
def tag_files_agree():
    """:func:`assert_tag_files_agree` (conftest cannot be imported)."""
    return assert_tag_files_agree


def assert_masks_agree(actual: dict, expected: dict, max_share: float = 0.01) -> None:
    """Pseudo masks of two runs agree under the determinism contract.

    ``actual``/``expected`` map PNG names to bytes. The same files; a label may
    differ only where two CAM channels tie, which is on a boundary between
    labels (docs/determinism.md): every differing pixel must touch another
    label in one of the two maps (8-neighbourhood), and at most ``max_share``
    of an image's pixels may differ.
    """
    import io

    import numpy as np
    from PIL import Image
    assert sorted(actual) == sorted(expected)
    for name in sorted(expected):
        if actual[name] == expected[name]:
            continue
        maps = [np.asarray(Image.open(io.BytesIO(data))) for data in (actual[name], expected[name])]
        assert maps[0].shape == maps[1].shape, name
        diff = maps[0] != maps[1]
        assert diff.mean() <= max_share, (name, float(diff.mean()))
        boundary = np.zeros_like(diff)
        for m in maps:
            p = np.pad(m.astype(np.int32), 1, mode='edge')
            h, w = m.shape
            for dy in (0, 1, 2):
                for dx in (0, 1, 2):
                    boundary |= p[dy:dy + h, dx:dx + w] != m
        assert not (diff & ~boundary).any(), (name, int((diff & ~boundary).sum()))


@pytest.fixture(scope='session')
def masks_agree():
    """:func:`assert_masks_agree` (conftest cannot be imported)."""
    return assert_masks_agree


def reference_tagging_metrics(scores: np.ndarray, labels: np.ndarray, ratio: float) -> dict:
    """docs/method.md, "Classification evaluation", written out independently of the package.

    Non-interpolated AP per class (classes without positives count as 0 in the mean) and pooled
    precision/recall/F1 of the per-image relative threshold, in percent. Scores must be distinct
    within a class (no tie handling here).
    """
    num_classes = scores.shape[1]
    ap = np.zeros(num_classes)
    for c in range(num_classes):
        if labels[:, c].any():
            hits = labels[np.argsort(-scores[:, c], kind='stable'), c]
            ranks = np.flatnonzero(hits) + 1
            ap[c] = np.mean(np.arange(1, len(ranks) + 1) / ranks)
    low, high = scores.min(1, keepdims=True), scores.max(1, keepdims=True)
    pred = scores > low + np.float32(ratio) * (high - low)
    tp = (pred & labels).sum()
    op, orr = tp / pred.sum(), tp / labels.sum()
    return {'tagging/mAP': 100 * ap.mean(), 'tagging/OP': 100 * op, 'tagging/OR': 100 * orr,
            'tagging/OF1': 100 * 2 * op * orr / (op + orr)}


@pytest.fixture(scope='session')
def tagging_metrics_oracle():
    """:func:`reference_tagging_metrics`, for tests that check a tool's metrics."""
    return reference_tagging_metrics


def write_image_split(root, ids, write_image, tags_of):
    """A VOC-style tagged split under ``root``.

    ``JPEGImages/<id>.jpg`` written by ``write_image(index, img_id, path)`` in id order, then
    ``list.txt`` (the ids) and ``tags.txt`` (``img_id t1 t2 ...`` lines, ``tags_of(img_id)`` called
    in id order after every image is written). Returns ``root``.
    """
    (root / 'JPEGImages').mkdir()
    for index, img_id in enumerate(ids):
        write_image(index, img_id, root / 'JPEGImages' / f'{img_id}.jpg')
    (root / 'list.txt').write_text(''.join(i + '\n' for i in ids))
    (root / 'tags.txt').write_text(''.join(
        ' '.join([i, *map(str, tags_of(i))]) + '\n' for i in ids))
    return root


@pytest.fixture(scope='session')
def image_split():
    """:func:`write_image_split`, for the tool tests' photo folders."""
    return write_image_split


def write_random_split(root, ids, seed: int, max_side: int, min_tags: int):
    """:func:`write_image_split` of random JPEGs, 24 to ``max_side`` pixels a side.

    Each is tagged with ``min_tags`` to 3 of VOC's 20 classes (seeded).
    """
    rng = np.random.default_rng(seed)
    tags = {}

    def write(index, img_id, path):
        from PIL import Image
        h, w = rng.integers(24, max_side + 1, size=2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
        tags[img_id] = sorted(set(rng.integers(0, 20, size=rng.integers(min_tags, 4)).tolist()))

    return write_image_split(root, ids, write, tags.get)


@pytest.fixture(scope='session')
def random_split():
    """:func:`write_random_split`, for tests that need a split of many small images."""
    return write_random_split
