"""``tools/test.py`` tagging a folder of photos, beside the model alone."""
import itertools
import os
import os.path as osp
import subprocess
import sys
from typing import Dict, Tuple

import torch

from tagclip_mmseg.testing import images

from .inputs import ROOT, demo_photos, model_settings, rounded, size_label
from .timer import Bench

__all__ = ['run_e2e']

FOLDER_CONFIG = osp.join(ROOT, images.FOLDER_CONFIG)


def write_photos(folder: str, count: int, hw: Tuple[int, int]) -> None:
    """Write ``count`` distinct JPEGs at ``hw`` from the demo photos."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    photos = demo_photos()
    for i in range(count):
        with Image.open(photos[i % len(photos)]) as img:
            img = img.convert('RGB').resize((hw[1], hw[0]), Image.BICUBIC)
        if (i // len(photos)) % 2:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img.save(osp.join(folder, f'photo{i:04d}.jpg'), quality=90)


def photo_batch(folder: str, patch: int, device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:
    """The folder's photos resized to the patch multiple and CLIP-normalised."""
    import numpy as np
    from PIL import Image

    from tagclip_mmseg.models.clip.data_preprocessor import CLIP_MEAN, CLIP_STD
    rows = []
    for name in sorted(os.listdir(folder)):
        with Image.open(osp.join(folder, name)) as img:
            h, w = rounded((img.height, img.width), patch)
            rows.append(torch.from_numpy(np.array(img.convert('RGB').resize(
                (w, h), Image.BICUBIC))).permute(2, 0, 1).float())
    x = torch.stack(rows)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device=device, dtype=dtype)


def write_config(bench: Bench, ckpt: str, work_dir: str) -> str:
    """The folder config with the timed tagger's settings, saved in ``work_dir``.

    The model takes the same :func:`~.inputs.model_settings` as the tagger
    built in this process, so both time the same model.
    """
    from mmengine.config import Config

    from tagclip_mmseg.testing.models import VOC_TAGGER
    args = bench.args
    cfg = Config.fromfile(FOLDER_CONFIG)
    settings = model_settings(args, ckpt, osp.join(work_dir, 'text_cache'))
    cfg.merge_from_dict(dict(
        model=dict(settings, templates=VOC_TAGGER['templates']),
        test_dataloader=dict(batch_size=args.e2e_batch_size, num_workers=args.loader_workers)))
    os.makedirs(osp.join(work_dir, 'e2e'), exist_ok=True)
    path = osp.join(work_dir, 'e2e', 'tagclip_folder.py')
    cfg.dump(path)
    return path


def time_tool(bench: Bench, ckpt: str, work_dir: str) -> Tuple[Dict[int, str], dict]:
    """Time ``tools/test.py`` on ``--e2e-images`` photos and on half as many.

    Returns:
        tuple: Photo count -> folder, and ``'e2e-<count>'`` -> :class:`~.timer.Timing`.
    """
    args = bench.args
    root = osp.join(work_dir, 'e2e')
    folders = {n: osp.join(root, f'photos{n}') for n in (args.e2e_images // 2, args.e2e_images)}
    for n, folder in folders.items():
        write_photos(folder, n, args.e2e_size)
    config = write_config(bench, ckpt, work_dir)
    # The tool imports the package this script imported.
    import tagclip_mmseg
    package_root = osp.dirname(osp.dirname(osp.abspath(tagclip_mmseg.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_root] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    if args.threads:
        env['OMP_NUM_THREADS'] = str(args.threads)
    run_index = itertools.count()

    def run(n: int) -> None:
        # Each run in a fresh folder: the config's relative output paths
        # (tags file, journals) land there, so no run resumes another.
        cwd = osp.join(root, f'run{next(run_index)}')
        os.makedirs(cwd)
        cmd = [sys.executable, osp.join(ROOT, 'tools', 'test.py'), config, '--work-dir',
               osp.join(cwd, 'work'), '--data-root', folders[n]]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
        if proc.returncode:
            raise RuntimeError(f'tools/test.py failed (exit {proc.returncode}):\n'
                               f'{(proc.stdout + proc.stderr)[-3000:]}')

    return folders, bench.measure({f'e2e-{n}': (lambda n=n: run(n)) for n in folders})


def run_e2e(bench: Bench, tagger, ckpt: str, work_dir: str, patch: int,
            dtype: torch.dtype) -> None:
    """Print ``tools/test.py``'s images/s on a folder, and its ratio to the model alone.

    The difference of the two runs' wall times (:func:`time_tool`) over the
    difference of their photo counts is the per-image cost, the start-up
    (imports, model load, cached text embeddings) cancelled out.
    """
    args = bench.args
    small, big = args.e2e_images // 2, args.e2e_images
    folders, res = time_tool(bench, ckpt, work_dir)
    photos = photo_batch(folders[big], patch, bench.device, dtype)
    B = args.e2e_batch_size
    # The images per forward of tools/test.py's predict at batch B, so that
    # the ratio compares the same model work.
    step = tagger.forward_batch_size(photos.device, B)
    model = bench.measure({'model': lambda: [tagger.tag(c) for c in photos.split(step)]})['model']
    t_small, t_big = res[f'e2e-{small}'].seconds, res[f'e2e-{big}'].seconds
    per_image = (t_big - t_small) / (big - small)
    h, w = args.e2e_size
    size = size_label(rounded((h, w), patch), patch)
    bench.ratio(f'tools/test.py tagging, {w}x{h} photos', 1 / per_image if per_image > 0 else 0.,
                unit='img/s', detail=f'{per_image:.3f} s/img from runs on {small} and {big} '
                f'photos ({t_small:.1f} s, {t_big:.1f} s); '
                f'batch {B}, {args.loader_workers} data-loader workers')
    bench.timing(f'tag fast, model only, same photos, {size}', model, len(photos),
                 f'{step} image(s) per forward, as tools/test.py at batch {B}')
    bench.ratio('tools/test.py / model only (s per image)', per_image / (model.seconds / big),
                detail='data loading, writers and hooks included')
