"""Shared fixtures: tiny random CLIPs that every test can afford on a CPU.

No test downloads anything; checkpoints are built here with random weights.
"""
import os
import os.path as osp

import pytest
import torch

REAL_IMAGES = osp.abspath(
    osp.join(osp.dirname(__file__), '..', '..', 'shared', 'data', 'real_images'))
if not osp.isdir(REAL_IMAGES):  # CI clones next to a copy of shared/
    REAL_IMAGES = os.environ.get('TAGCLIP_REAL_IMAGES', REAL_IMAGES)

#: Architecture of the tiny CLIP: widths are multiples of 64 so that OpenAI's
#: ``heads = width // 64`` rule (used when reading a checkpoint) gives 2 heads.
TINY_CLIP_ARCH = dict(
    embed_dim=32,
    image_resolution=64,
    vision_layers=3,
    vision_width=128,
    vision_patch_size=16,
    context_length=77,
    vocab_size=49408,
    transformer_width=128,
    transformer_heads=2,
    transformer_layers=2)


def make_tiny_clip(seed: int = 0, **overrides):
    """A tiny random CLIP in OpenAI naming (fp32, eval mode)."""
    from tagclip_mmseg.models.clip import CLIP
    torch.manual_seed(seed)
    model = CLIP(**{**TINY_CLIP_ARCH, **overrides}).eval()
    # Random init leaves some parameters at constants; perturb every tensor so
    # that round-trip tests would notice a parameter that failed to load.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.fixture
def tiny_clip():
    return make_tiny_clip()


@pytest.fixture
def tiny_clip_path(tmp_path, tiny_clip):
    """A plain state_dict checkpoint of :func:`tiny_clip` on disk."""
    path = tmp_path / 'tiny_clip.pth'
    torch.save(tiny_clip.state_dict(), path)
    return str(path)


@pytest.fixture(scope='session')
def real_images_dir():
    if not osp.isdir(REAL_IMAGES):
        pytest.skip(f'real images not found at {REAL_IMAGES}')
    return REAL_IMAGES


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
def tiny_pseudo_seg_data(tmp_path_factory, real_images_dir):
    """A few real photos in the VOC 2012 and COCO layouts, with fake masks.

    The same six images (ids ``img0``..``img5``) serve as train and val.
    Pseudo masks (random class blobs with a 255 band) sit in their own
    folders, like the output of ``tools/generate_pseudo_labels.py``; the
    "real" val masks are other random blobs.

    Returns:
        dict: ``voc_root`` (``.../VOC2012``), ``voc_pseudo``, ``coco_root``
        (``.../coco``: train2014, val2017), ``coco_pseudo`` and ``ids``.
    """
    import glob

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp('pseudo_seg')
    photos = sorted(glob.glob(osp.join(real_images_dir, 'images', '*.jpg')))[:len(TINY_SEG_SIZES)]
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
    path = tmp_path_factory.mktemp('deep_tiny_clip') / 'deep_tiny_clip.pth'
    torch.save(make_tiny_clip(vision_layers=12).state_dict(), path)
    return str(path)


@pytest.fixture
def tiny_clip_arch():
    """A copy of :data:`TINY_CLIP_ARCH` (test modules cannot import conftest
    under ``--import-mode=importlib``)."""
    return dict(TINY_CLIP_ARCH)


@pytest.fixture(scope='session')
def tiny_clip_factory():
    """:func:`make_tiny_clip`, for tests that need several different tiny CLIPs."""
    return make_tiny_clip


# ------------------------------------------------------- tools, end to end
#: Repository root: the tools resolve configs relative to it.
REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


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
    def env():
        """CPU only, one thread per process, unbuffered output."""
        env = dict(os.environ, CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1',
                   PYTHONUNBUFFERED='1')
        env.pop('LOCAL_RANK', None)
        return env

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
        """Run the tool's ``__main__`` here; whatever it raises propagates."""
        import runpy
        import sys
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(REPO_ROOT)
            mp.setattr(sys, 'argv', [script, *args])
            mp.setenv('LOCAL_RANK', '0')
            runpy.run_path(osp.join(REPO_ROOT, script), run_name='__main__')


@pytest.fixture(scope='session')
def tool_runner():
    """A :class:`ToolRunner` (``subprocess``, ``popen``, ``inprocess``,
    ``kill_when``, ``kill_seed``).

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
    torch.save(make_tiny_clip().state_dict(), checkpoint)
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

    The real VOC config (``configs/pseudo_labels/clip-es_vit-b16_voc12-val_
    tagclip-tags.py``) without GT masks (no ``seg_map_path``; the pipeline's
    ``LoadOptionalAnnotations`` then loads nothing) and the mIoU metric: images
    ``<data_root>/JPEGImages/<id>.jpg`` for the ids of ``ann_file`` (or every
    ``.jpg`` there without one), tags from ``--tags``, masks from the writer.
    """
    path = tmp_path_factory.mktemp('pl_config') / 'clip-es_list_no-gt.py'
    base = osp.join(REPO_ROOT, 'configs', 'pseudo_labels',
                    'clip-es_vit-b16_voc12-val_tagclip-tags.py')
    path.write_text(
        f'_base_ = [{base!r}]\n'
        'test_dataloader = dict(dataset=dict(\n'
        "    ann_file='', data_prefix=dict(_delete_=True, img_path='JPEGImages')))\n"
        "test_evaluator = [dict(type='PseudoLabelWriter', out_dir=_base_.pseudo_label_dir)]\n")
    return str(path)
