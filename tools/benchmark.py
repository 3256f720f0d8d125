"""Time and size the fast (batched) paths against the faithful per-image ones.

Everything runs on ViT-B/16-shaped random weights (``CLIP()`` with its
default arguments, saved to a temporary file), so the script needs no
download and measures exactly the work the real model does; the scores
themselves mean nothing. It prints one line per figure:

* images/s and peak memory of the plain backbone forward (fused attention,
  no maps), the faithful per-image tagger (:func:`reference_tagclip`), the
  fast tagger (:meth:`TagCLIP.tag` on the batch), the faithful CAMs
  (:func:`reference_cams`) and the fast CAMs
  (:meth:`CLIPESPseudoLabeler.predict`);
* ratios against the plain forward measured in the same run, with the
  issue's targets (PASS/MISS): fast tagging at the working size and at a
  large size, CAMs with two tags and the marginal cost of each extra tag;
  on a GPU also the speed-ups over the faithful per-image path (which runs
  there too, with the reference's host round trips for OpenCV);
* the memory one large image adds above the loaded model (measured in a
  fresh process, so earlier figures cannot hide or inflate it);
* text-embedding time on a first launch and on a second one that hits the
  on-disk cache.

Times are the median (or, with ``--statistic min``, the fastest) of
``--repeats`` runs after ``--warmup`` untimed ones; the functions compared
with each other are run round-robin. This is a script, not a test: it never
fails on a MISS.

Examples::

    # the figures of docs/performance.md (CPU, fp32)
    python tools/benchmark.py --repeats 3

    # a GPU: batches of 32 under bf16 autocast, against the per-image references
    python tools/benchmark.py --device cuda --autocast bf16 --batch-size 32 \
        --parts backbone tag cam memory

    # seconds-long smoke run (tiny random CLIP, tiny images)
    python tools/benchmark.py --tiny
"""
import argparse
import contextlib
import gc
import json
import os
import os.path as osp
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

#: Parts run by default; ``large-faithful`` (the per-image reference at the
#: large size, about a minute per image on two CPU cores) is opt-in.
PARTS = ('backbone', 'tag', 'cam', 'large', 'memory', 'prompts', 'batching', 'crf', 'e2e',
         'large-faithful')
DEFAULT_PARTS = ('backbone', 'tag', 'cam', 'large', 'memory', 'prompts', 'batching', 'crf', 'e2e')

#: Targets of the issue, as ratios to the plain forward of the same run.
TARGET_TAG = 1.5
TARGET_TAG_LARGE = 2.5
TARGET_CAM_TWO_TAGS = 1.3
TARGET_CAM_PER_TAG = 0.1
TARGET_MEMORY_GIB = 2.8
TARGET_CACHE_HIT_S = 1.0
#: Per-image time of a batch over per-image time at batch 1 ("batching never
#: loses"; 5% for the noise of a shared machine).
TARGET_BATCH_PER_IMAGE = 1.05
#: CRF images/s with 2 worker processes over 1.
TARGET_CRF_SCALING = 1.8
#: GPU targets: images/s of the fast path over the faithful per-image one.
TARGET_GPU_TAG_SPEEDUP = 20.
TARGET_GPU_CAM_SPEEDUP = 10.

#: A narrow CLIP with ViT-B/16's depth, so the default layer indices
#: (``avg_layers=(8, 9, 10)``, ``caa_layers=range(4, 11)``) stay valid.
TINY_ARCH = dict(embed_dim=32, image_resolution=64, vision_layers=12, vision_width=64,
                 vision_patch_size=16, transformer_width=64, transformer_heads=1,
                 transformer_layers=2)

GIB = 1024**3
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_PHOTOS = osp.join(ROOT, 'demo', 'images')
FOLDER_CONFIG = osp.join(ROOT, 'configs', 'tagclip', 'tagclip_vit-b16_folder.py')


# --------------------------------------------------------------- arguments
def parse_size(text: str) -> Tuple[int, int]:
    """``'HxW'`` -> (H, W)."""
    m = re.fullmatch(r'(\d+)[xX](\d+)', text.strip())
    if not m or min(int(m.group(1)), int(m.group(2))) < 1:
        raise argparse.ArgumentTypeError(f'expected HEIGHTxWIDTH such as 384x512, got {text!r}')
    return int(m.group(1)), int(m.group(2))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from tagclip_mmseg.utils.cli import add_quirks_args, quirks_from_args

    parser = argparse.ArgumentParser(
        description='Benchmark the fast TagCLIP / CLIP-ES paths against the faithful ones',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--size', type=parse_size, default=(384, 512),
                        help='working image size HEIGHTxWIDTH (rounded up to the patch size)')
    parser.add_argument('--large-size', type=parse_size, default=(900, 1352),
                        help='large image size for the "large" and "memory" figures '
                        '(900x1352 -> 57x85 patches, 4,846 tokens)')
    parser.add_argument('--batch-size', type=int, default=1, help='images per batch')
    parser.add_argument('--device', default='cpu', help="'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument('--dtype', default='fp32', choices=['fp32', 'fp16', 'bf16'],
                        help='dtype of the CLIP weights')
    parser.add_argument('--autocast', choices=['fp16', 'bf16'],
                        help='run every timed function under torch.autocast (the models\' '
                        '"autocast" option); meant for GPUs')
    parser.add_argument('--no-faithful', action='store_true',
                        help='skip the faithful per-image references (and the speed-ups)')
    add_quirks_args(parser)  # --quirks (the per-image references follow the same quirks)
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per figure')
    parser.add_argument('--statistic', default='median', choices=['median', 'min'],
                        help='summary of the timed runs; "min" is the least disturbed run, '
                        'useful on a machine shared with other jobs')
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs before timing')
    parser.add_argument('--parts', nargs='+', choices=PARTS, default=list(DEFAULT_PARTS),
                        help='figures to measure')
    parser.add_argument('--cam-tags', type=int, nargs=2, default=(2, 6), metavar=('FEW', 'MANY'),
                        help='tag counts for the CAM figures; the marginal cost per tag is '
                        '(t(MANY) - t(FEW)) / (MANY - FEW)')
    parser.add_argument('--full-prompts', action='store_true',
                        help='time the first launch on the full VOC vocabulary (20 + 25 '
                        'classes x 85 templates = 3,825 prompts; minutes on a CPU) instead '
                        'of a small one')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=(1, 8),
                        help='batch sizes compared by the "batching" part, per image, on the '
                        'same max(batch sizes) images')
    parser.add_argument('--crf-size', type=parse_size, default=(375, 500),
                        help='image size of the "crf" part (VOC: 500x375 landscape)')
    parser.add_argument('--crf-classes', type=int, default=4,
                        help='CRF channels: background + tags (VOC images have 1-3 tags)')
    parser.add_argument('--crf-images', type=int, default=8,
                        help='images per timed CRF run (shared by the workers)')
    parser.add_argument('--crf-workers', type=int, nargs='+', default=(1, 2),
                        help='worker-process counts timed by the "crf" part')
    parser.add_argument('--e2e-size', type=parse_size, default=(375, 500),
                        help='photo size of the "e2e" part (VOC: 500x375)')
    parser.add_argument('--e2e-images', type=int, default=16,
                        help='photos in the larger of the two tools/test.py runs of the "e2e" '
                        'part; the smaller run has half as many')
    parser.add_argument('--e2e-batch-size', type=int, default=8,
                        help='test_dataloader.batch_size of the "e2e" part (the configs\' '
                        'default)')
    parser.add_argument('--loader-workers', type=int, default=2,
                        help='test_dataloader.num_workers of the "e2e" part')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--tiny', action='store_true',
                        help='smoke run: tiny random CLIP, 64x96 and 96x128 images, 1 repeat')
    parser.add_argument('--work-dir', help='folder for the checkpoint and text cache '
                        '(default: a temporary folder, removed at the end)')
    # Internal: the memory figure runs in a child process.
    parser.add_argument('--probe', choices=['tag', 'cam', 'tag-faithful'], help=argparse.SUPPRESS)
    parser.add_argument('--checkpoint', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quirks_from_args(parser, args)
    if args.tiny:
        if args.size == (384, 512):
            args.size = (64, 96)
        if args.large_size == (900, 1352):
            args.large_size = (96, 128)
        if tuple(args.batch_sizes) == (1, 8):
            args.batch_sizes = (1, 2)
        if args.crf_size == (375, 500):
            args.crf_size = (48, 64)
        if args.e2e_size == (375, 500):
            args.e2e_size = (60, 80)
        args.crf_images = min(args.crf_images, 4)
        args.e2e_images = min(args.e2e_images, 4)
        args.e2e_batch_size = min(args.e2e_batch_size, 2)
        args.loader_workers = min(args.loader_workers, 1)
        args.repeats = 1
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error('--batch-size and --repeats must be >= 1 and --warmup >= 0')
    if min(args.batch_sizes) < 1 or min(args.crf_workers) < 1 or args.crf_images < 1:
        parser.error('--batch-sizes, --crf-workers and --crf-images must be >= 1')
    if args.crf_classes < 2:
        parser.error('--crf-classes must be >= 2 (background and at least one tag)')
    if args.e2e_images < 2 or args.e2e_batch_size < 1 or args.loader_workers < 0:
        parser.error('--e2e-images must be >= 2, --e2e-batch-size >= 1, --loader-workers >= 0')
    if not 1 <= args.cam_tags[0] < args.cam_tags[1] <= 20:
        parser.error('--cam-tags FEW MANY needs 1 <= FEW < MANY <= 20 (the VOC vocabulary)')
    return args


# ------------------------------------------------------------------ memory
class MemoryMeter:
    """Peak memory of a code section, on the host or the accelerator.

    On a GPU: ``torch.cuda`` allocator statistics. On the host: the
    resident-set high-water mark, which Linux lets a process reset
    (``/proc/self/clear_refs``); elsewhere ``getrusage`` gives the peak of the
    whole process life, which is still an upper bound.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'
        self.device = device
        self.resettable = self.cuda or self._can_reset_host()
        self.what = 'device peak' if self.cuda else 'host peak RSS'
        if not self.resettable:
            self.what += ' (process lifetime)'

    @staticmethod
    def _can_reset_host() -> bool:
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            return MemoryMeter._status_kib('VmHWM') is not None
        except OSError:
            return False

    @staticmethod
    def _status_kib(field: str) -> Optional[int]:
        try:
            with open('/proc/self/status') as f:
                m = re.search(rf'^{field}:\s+(\d+) kB', f.read(), re.M)
        except OSError:
            return None
        return int(m.group(1)) if m else None

    def reset(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')

    def current(self) -> int:
        """Bytes in use now."""
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        kib = self._status_kib('VmRSS')
        if kib is None:
            return self.peak()
        return kib * 1024

    def peak(self) -> int:
        """Peak bytes since the last :meth:`reset`."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        if self.resettable:
            return self._status_kib('VmHWM') * 1024
        # ru_maxrss is KiB on Linux, bytes on macOS.
        scale = 1 if sys.platform == 'darwin' else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ------------------------------------------------------------------ timing
class Timing(NamedTuple):
    """One function's timing: the summary seconds, peak bytes, fastest and
    slowest run."""
    seconds: float
    peak: int
    low: float
    high: float


class Bench:
    """Shared state: device, memory meter, repeats, and the printing."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.meter = MemoryMeter(self.device)

    def autocast(self):
        """``torch.autocast`` when ``--autocast`` is given, else a no-op."""
        from tagclip_mmseg.models.clip import resolve_dtype
        if not self.args.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type,
                              dtype=resolve_dtype(self.args.autocast))

    def sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def measure(self, fns: Dict[str, Callable[[], object]],
                repeats: Optional[int] = None) -> Dict[str, Timing]:
        """Seconds (``--statistic`` of the runs) and peak memory of each function.

        The functions are timed round-robin (A, B, C, A, B, C, ...) after
        ``--warmup`` untimed rounds, so that a machine whose load drifts (a
        shared CI runner, other jobs on the same cores) slows all of them
        alike and the ratios between them stay meaningful.
        """
        repeats = self.args.repeats if repeats is None else repeats
        for _ in range(self.args.warmup):
            for fn in fns.values():
                with self.autocast():
                    fn()
        self.sync()
        times: Dict[str, List[float]] = {k: [] for k in fns}
        peaks = dict.fromkeys(fns, 0)
        for _ in range(repeats):
            for key, fn in fns.items():
                self.meter.reset()
                start = time.perf_counter()
                with self.autocast():
                    fn()
                self.sync()
                times[key].append(time.perf_counter() - start)
                peaks[key] = max(peaks[key], self.meter.peak())
        summary = statistics.median if self.args.statistic == 'median' else min
        return {k: Timing(summary(t), peaks[k], min(t), max(t)) for k, t in times.items()}

    def timing(self, label: str, t: Timing, images: int, detail: str = '') -> None:
        """Print a throughput figure; ``t`` is for a batch of ``images``."""
        spread = f'runs {t.low / images:.3f}-{t.high / images:.3f} s/img'
        print(f'{label:<52} {images / t.seconds:8.3f} img/s {t.seconds / images:8.3f} s/img  '
              f'{self.meter.what} {t.peak / GIB:5.2f} GiB  {spread}'
              f'{("; " + detail) if detail else ""}', flush=True)

    def ratio(self, label: str, value: float, target: Optional[float] = None,
              detail: str = '', unit: str = 'x', at_least: bool = False) -> None:
        """Print a derived figure, with the issue's target if it has one
        (an upper bound, or a lower one with ``at_least``)."""
        line = f'{label:<52} {value:8.3f} {unit:<3}'
        if target is not None:
            ok = value >= target if at_least else value <= target
            line += (f'  target {">=" if at_least else "<="} {target:g} {unit}  '
                     f'{"PASS" if ok else "MISS"}')
        if detail:
            line += f'  ({detail})'
        print(line.rstrip(), flush=True)


def tokens_of(hw: Tuple[int, int], patch: int) -> int:
    return -(-hw[0] // patch) * -(-hw[1] // patch) + 1


def rounded(hw: Tuple[int, int], patch: int) -> Tuple[int, int]:
    """The size :class:`ResizeToPatchMultiple` gives an image of ``hw``."""
    return -(-hw[0] // patch) * patch, -(-hw[1] // patch) * patch


def size_label(hw: Tuple[int, int], patch: int) -> str:
    return f'{hw[0]}x{hw[1]} ({tokens_of(hw, patch)} tok)'


# ------------------------------------------------------------------ models
def make_checkpoint(work_dir: str, tiny: bool, seed: int) -> str:
    """ViT-B/16-shaped (or tiny) random CLIP saved as a plain state dict."""
    from tagclip_mmseg.testing.random_clip import random_clip
    path = osp.join(work_dir, 'clip_tiny.pth' if tiny else 'clip_vit-b16_random.pth')
    if not osp.isfile(path):
        random_clip(seed, path, **(TINY_ARCH if tiny else {}))
    return path


def build_tagger(args: argparse.Namespace, ckpt: str, cache_dir: str, device: torch.device):
    from tagclip_mmseg.testing.models import VOC_TAGGER, build_tagger
    return build_tagger(dict(checkpoint=ckpt, dtype=args.dtype), args.quirks,
                        text_cache_dir=cache_dir, autocast=args.autocast,
                        **VOC_TAGGER).to(device)


def build_labeler(args: argparse.Namespace, ckpt: str, cache_dir: str, device: torch.device):
    from tagclip_mmseg.testing.models import VOC_LABELER, build_labeler
    return build_labeler(dict(checkpoint=ckpt, dtype=args.dtype), args.quirks,
                         text_cache_dir=cache_dir, autocast=args.autocast,
                         **VOC_LABELER).to(device)


def random_images(args: argparse.Namespace, hw: Tuple[int, int], patch: int, batch: int,
                  device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(args.seed)
    h, w = rounded(hw, patch)
    return torch.randn(batch, 3, h, w, generator=gen).to(device=device, dtype=dtype)


def cam_samples(batch: int, tags: List[int], hw: Tuple[int, int]) -> list:
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(batch):
        s = SegDataSample()
        s.set_metainfo(dict(tags=list(tags), ori_shape=hw, img_path='benchmark.jpg'))
        samples.append(s)
    return samples


# ------------------------------------------------------------------- parts
def tagging_fns(tagger, images: torch.Tensor, suffix: str,
                faithful: bool) -> Tuple[Dict[str, Callable[[], object]], int]:
    """Tagging functions to time, and the number of CWR crops per batch."""
    from tagclip_mmseg.testing.reference import reference_tagclip
    crops = int(tagger.tag(images).cwr_done.sum())
    s = tagger.cwr_crop_size
    crop_batch = torch.zeros(max(crops, 1), 3, s, s, device=images.device, dtype=images.dtype)

    def without_cwr() -> None:
        tagger.cwr = False
        try:
            tagger.tag(images)
        finally:
            tagger.cwr = True

    fns = {f'tag-fast{suffix}': lambda: tagger.tag(images), f'tag-no-cwr{suffix}': without_cwr}
    if crops:
        fns[f'crops{suffix}'] = lambda: tagger.clip.visual(crop_batch)
    if faithful:
        fns[f'tag-faithful{suffix}'] = lambda: [reference_tagclip(tagger, img) for img in images]
    return fns, crops


def report_tagging(bench: Bench, res: dict, suffix: str, size: str, batch: int, crops: int,
                   crop_size: int) -> None:
    base = res[f'backbone{suffix}'].seconds
    fast = res[f'tag-fast{suffix}'].seconds
    bench.timing(f'tag fast (TagCLIP.tag), {size}', res[f'tag-fast{suffix}'], batch,
                 f'{crops / batch:.1f} CWR crops/img')
    bench.timing(f'tag fast without CWR, {size}', res[f'tag-no-cwr{suffix}'], batch,
                 'coarse pass + DMAR')
    crop_time = res[f'crops{suffix}'].seconds if crops else 0.
    if crops:
        bench.timing(f'CWR crop forwards alone, {crops / batch:.1f} x {crop_size}px',
                     res[f'crops{suffix}'], batch, 'plain forward of the crop batch')
    faithful = res.get(f'tag-faithful{suffix}')
    if faithful:
        bench.timing(f'tag faithful (reference, per image), {size}', faithful, batch)
    large = bool(suffix)
    bench.ratio(f'tag fast / backbone{suffix}', fast / base,
                TARGET_TAG_LARGE if large else TARGET_TAG)
    bench.ratio(f'tag fast / (backbone + CWR crops){suffix}', fast / (base + crop_time),
                detail="the method's floor: one forward plus the crop forwards")
    no_cwr = res[f'tag-no-cwr{suffix}'].seconds
    bench.ratio(f'tag fast without CWR / backbone{suffix}', no_cwr / base)
    if crops:
        # The crop count is set by the weights; this says how many crops the
        # target leaves room for, from the (stable) plain crop-forward time.
        per_crop = crop_time / crops / (base / batch)
        room = ((TARGET_TAG_LARGE if large else TARGET_TAG) - no_cwr / base) / per_crop
        bench.ratio(f'tag fast, each CWR crop / backbone{suffix}', per_crop,
                    detail=f'plain crop forward; the target leaves room for '
                    f'{max(room, 0.):.1f} crops/img')
    if faithful:
        gpu = bench.device.type == 'cuda'
        bench.ratio(f'tag faithful / backbone{suffix}', faithful.seconds / base)
        bench.ratio(f'tag speed-up fast vs faithful{suffix}', faithful.seconds / fast,
                    TARGET_GPU_TAG_SPEEDUP if gpu else None, detail='images/s ratio, same run',
                    at_least=True)


def cam_fns(labeler, images: torch.Tensor, tag_counts: Sequence[int],
            faithful: bool) -> Dict[str, Callable[[], object]]:
    from tagclip_mmseg.testing.reference import reference_cams
    B, hw = images.shape[0], tuple(images.shape[-2:])
    fns = {}
    for k in tag_counts:
        tags = list(range(k))
        fns[f'cam-fast-{k}'] = (
            lambda tags=tags: labeler.predict(list(images), cam_samples(B, tags, hw)))
        if faithful:
            fns[f'cam-faithful-{k}'] = (lambda tags=tags: [
                reference_cams(labeler, img, tags, hw) for img in images
            ])
    return fns


def report_cams(bench: Bench, res: dict, size: str, batch: int) -> None:
    few, many = bench.args.cam_tags
    base = res['backbone'].seconds
    for kind, name in (('fast', 'CAMs fast, {} tags (predict)'),
                       ('faithful', 'CAMs faithful, {} tags (reference)')):
        for k in (few, many):
            if f'cam-{kind}-{k}' in res:
                bench.timing(f'{name.format(k)}, {size}', res[f'cam-{kind}-{k}'], batch)
    # All times per batch; the per-tag detail is per image.
    fast = {k: res[f'cam-fast-{k}'].seconds for k in (few, many)}
    bench.ratio(f'CAMs fast {few} tags / backbone', fast[few] / base, TARGET_CAM_TWO_TAGS)
    per_tag = (fast[many] - fast[few]) / (many - few)
    bench.ratio('CAMs fast per extra tag / backbone', per_tag / base, TARGET_CAM_PER_TAG,
                detail=f'{per_tag / batch:.3f} s/img per tag, from {few} vs {many} tags')
    if f'cam-faithful-{few}' not in res:
        return
    ref = {k: res[f'cam-faithful-{k}'].seconds for k in (few, many)}
    ref_tag = (ref[many] - ref[few]) / (many - few)
    bench.ratio(f'CAMs faithful {few} tags / backbone', ref[few] / base)
    bench.ratio('CAMs faithful per extra tag / backbone', ref_tag / base,
                detail=f'{ref_tag / batch:.3f} s/img per tag')
    gpu = bench.device.type == 'cuda'
    for k in (few, many):
        bench.ratio(f'CAMs speed-up fast vs faithful, {k} tags', ref[k] / fast[k],
                    TARGET_GPU_CAM_SPEEDUP if gpu else None, detail='images/s ratio, same run',
                    at_least=True)


def run_memory_probe(args: argparse.Namespace, what: str, ckpt: str, work_dir: str) -> dict:
    """Measure, in a fresh process, the memory one large image adds."""
    cmd = [sys.executable, osp.abspath(__file__), '--probe', what, '--checkpoint', ckpt,
           '--work-dir', work_dir, '--device', args.device, '--dtype', args.dtype, '--quirks',
           args.quirks, '--large-size', f'{args.large_size[0]}x{args.large_size[1]}', '--size',
           f'{args.size[0]}x{args.size[1]}', '--seed', str(args.seed)]
    if args.tiny:
        cmd.append('--tiny')
    if args.autocast:
        cmd += ['--autocast', args.autocast]
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
    if proc.returncode or not lines:
        raise RuntimeError(f'memory probe {what!r} failed (exit {proc.returncode}):\n'
                           f'{proc.stderr[-2000:]}')
    return json.loads(lines[-1])


def probe_main(args: argparse.Namespace) -> None:
    """Child process: load the model, warm up on a small image, then report
    how much one large image adds to the memory in use."""
    device = torch.device(args.device)
    meter = MemoryMeter(device)
    cache_dir = osp.join(args.work_dir, 'text_cache')
    if args.probe == 'cam':
        model = build_labeler(args, args.checkpoint, cache_dir, device)
    else:
        model = build_tagger(args, args.checkpoint, cache_dir, device)
    patch = model.clip.visual.patch_size
    dtype = model.clip.dtype
    small = random_images(args, args.size, patch, 1, device, dtype)
    large = random_images(args, args.large_size, patch, 1, device, dtype)

    def run(images: torch.Tensor) -> None:
        with model.autocast_context(device):
            run_once(images)

    def run_once(images: torch.Tensor) -> None:
        if args.probe == 'cam':
            model.predict(list(images), cam_samples(1, [0, 1], tuple(images.shape[-2:])))
        elif args.probe == 'tag':
            model.tag(images)
        else:
            from tagclip_mmseg.testing.reference import reference_tagclip
            with torch.no_grad():
                reference_tagclip(model, images[0])

    run(small)
    meter.reset()
    base = meter.current()
    start = time.perf_counter()
    run(large)
    elapsed = time.perf_counter() - start
    print(json.dumps(dict(base=base, peak=meter.peak(), seconds=elapsed, what=meter.what,
                          resettable=meter.resettable)))


def run_memory(bench: Bench, ckpt: str, work_dir: str, patch: int) -> None:
    args = bench.args
    size = size_label(rounded(args.large_size, patch), patch)
    probes = [('tag', 'tag fast', TARGET_MEMORY_GIB), ('cam', 'CAMs fast, 2 tags', None)]
    if 'large-faithful' in args.parts and not args.no_faithful:
        probes.append(('tag-faithful', 'tag faithful (reference)', None))
    for what, name, target in probes:
        res = run_memory_probe(args, what, ckpt, work_dir)
        added = (res['peak'] - res['base']) / GIB
        bench.ratio(f'memory added by one image, {name}', added, target, unit='GiB',
                    detail=f'{size}; {res["what"]} {res["peak"] / GIB:.2f} GiB over '
                    f'{res["base"] / GIB:.2f} GiB with the model loaded')


def run_prompts(bench: Bench, clip, work_dir: str) -> None:
    from tagclip_mmseg.models.clip.presets import (resolve_background, resolve_classes,
                                              resolve_templates)
    from tagclip_mmseg.models.clip.text_classifier import build_text_classifier
    classes = resolve_classes('voc') + resolve_background('voc')
    templates = resolve_templates('tagclip')
    full = len(classes) * len(templates)
    if not bench.args.full_prompts:
        classes, templates = classes[:3], templates[:(2 if bench.args.tiny else 10)]
    n = len(classes) * len(templates)
    # A fresh cache folder, so that a reused --work-dir cannot turn the first
    # launch into a cache hit.
    with tempfile.TemporaryDirectory(dir=work_dir) as cache_dir, torch.no_grad():
        bench.sync()
        start = time.perf_counter()
        build_text_classifier(clip, classes, templates, cache_dir=cache_dir)
        bench.sync()
        first = time.perf_counter() - start
        start = time.perf_counter()
        build_text_classifier(clip, classes, templates, cache_dir=cache_dir)
        bench.sync()
        second = time.perf_counter() - start
    est = '' if n == full else f'; {full} prompts (VOC x 85 templates) ~ {first / n * full:.0f} s'
    bench.ratio(f'text embeddings, first launch ({n} prompts)', first, unit='s',
                detail=f'{n / first:.1f} prompts/s{est}')
    bench.ratio('text embeddings, second launch (cache hit)', second, TARGET_CACHE_HIT_S,
                unit='s', detail=f'{len(classes)} classes read from the on-disk cache')


def run_batching(bench: Bench, tagger, labeler, patch: int, dtype: torch.dtype) -> None:
    """Per-image time of tagging and of CAMs at each ``--batch-sizes`` entry.

    Every batch size processes the same ``max(--batch-sizes)`` images (in
    batches of that size) through ``predict``, which is what a data loader's
    batch gets: the models' device default (``images_per_forward``: one image
    per forward on the CPU, the whole batch elsewhere). One more line forces
    the largest batch through a single forward, to show what that default
    saves or costs on this device.
    """
    from mmpretrain.structures import DataSample
    args = bench.args
    sizes = sorted(set(args.batch_sizes))
    n = sizes[-1]
    images = random_images(args, args.size, patch, n, bench.device, dtype)
    hw = tuple(images.shape[-2:])
    size = size_label(hw, patch)
    tags = list(range(args.cam_tags[0]))

    def tag_batches(chunks, per_forward=None):
        tagger.images_per_forward = per_forward
        try:
            return [tagger.predict(list(c), [DataSample() for _ in c]) for c in chunks]
        finally:
            tagger.images_per_forward = None

    def cam_batches(chunks, per_forward=None):
        labeler.images_per_forward = per_forward
        try:
            return [labeler.predict(list(c), cam_samples(len(c), tags, hw)) for c in chunks]
        finally:
            labeler.images_per_forward = None

    fns: Dict[str, Callable[[], object]] = {}
    for b in sizes:
        chunks = images.split(b)
        fns[f'tag-b{b}'] = lambda chunks=chunks: tag_batches(chunks)
        fns[f'cam-b{b}'] = lambda chunks=chunks: cam_batches(chunks)
    fns['tag-forced'] = lambda: tag_batches([images], n)
    fns['cam-forced'] = lambda: cam_batches([images], n)
    res = bench.measure(fns)
    per_forward = tagger.forward_batch_size(bench.device, n)
    for kind, name in (('tag', 'tag fast'), ('cam', f'CAMs fast, {len(tags)} tags')):
        for b in sizes:
            bench.timing(f'{name}, batch {b}, {size}', res[f'{kind}-b{b}'], n,
                         f'{n // b} batch(es) of {b}, {min(per_forward, b)} image(s) per forward')
        bench.timing(f'{name}, batch {n} in one forward, {size}', res[f'{kind}-forced'], n,
                     f'images_per_forward={n}')
        one = res[f'{kind}-b{sizes[0]}'].seconds
        for b in sizes[1:]:
            bench.ratio(f'{name}, batch {b} / batch {sizes[0]} (s per image)',
                        res[f'{kind}-b{b}'].seconds / one, TARGET_BATCH_PER_IMAGE,
                        detail='batching never loses; 5% allowed for noise')
        bench.ratio(f'{name}, batch {n} in one forward / batch {sizes[0]} (s per image)',
                    res[f'{kind}-forced'].seconds / one,
                    detail='what the device default avoids (CPU) or gains (GPU)')


def crf_inputs(args: argparse.Namespace, count: int) -> List[Tuple[torch.Tensor, object]]:
    """``count`` (probabilities, sample) pairs at ``--crf-size``: smooth random
    class maps over a demo photo, like upsampled CAMs."""
    import numpy as np
    import torch.nn.functional as F
    from mmseg.structures import SegDataSample
    from PIL import Image
    h, w = args.crf_size
    gen = torch.Generator().manual_seed(args.seed)
    names = sorted(f for f in os.listdir(DEMO_PHOTOS) if f.endswith(('.jpg', '.png')))
    out = []
    for i in range(count):
        with Image.open(osp.join(DEMO_PHOTOS, names[i % len(names)])) as img:
            rgb = np.asarray(img.convert('RGB').resize((w, h), Image.BICUBIC))
        low = torch.rand(1, args.crf_classes, 12, 16, generator=gen)
        probs = F.interpolate(low, size=(h, w), mode='bilinear', align_corners=False)[0]
        probs = probs / probs.sum(dim=0, keepdim=True)
        out.append((probs, SegDataSample(metainfo=dict(ori_img=rgb))))
    return out


def run_crf(bench: Bench) -> None:
    """Dense CRF with the paper's parameters at VOC size: in the process, and
    in pools of ``--crf-workers`` worker processes (the ``workers`` option)."""
    args = bench.args
    from tagclip_mmseg.models.pseudo_labelers.crf import DenseCRF, shutdown_crf_pools
    try:
        serial = DenseCRF()
    except ImportError as e:
        print(f'# crf: skipped ({str(e).splitlines()[0]})', flush=True)
        return
    inputs = crf_inputs(args, args.crf_images)
    lut = torch.arange(args.crf_classes)
    n = len(inputs)

    def run_serial() -> None:
        for probs, sample in inputs:
            serial.label(probs, lut, sample)

    def run_pool(crf: DenseCRF) -> None:
        # As a labeler's predict does: submit the batch, then wait for it.
        pending = [crf.submit(probs, lut, sample) for probs, sample in inputs]
        for p in pending:
            p.result()

    pools = {k: DenseCRF(workers=k) for k in sorted(set(args.crf_workers))}
    try:
        startup = {}
        for k, crf in pools.items():  # start the workers: not part of the figures
            start = time.perf_counter()
            probs, sample = inputs[0]
            crf.label(probs, lut, sample)
            startup[k] = time.perf_counter() - start
        fns = {'crf-serial': run_serial}
        fns.update({f'crf-w{k}': (lambda crf=crf: run_pool(crf)) for k, crf in pools.items()})
        res = bench.measure(fns)
    finally:
        shutdown_crf_pools()
    h, w = args.crf_size
    size = f'{w}x{h}, {args.crf_classes} classes, 10 iterations'
    bench.timing(f'dense CRF in process, {size}', res['crf-serial'], n)
    for k in pools:
        bench.timing(f'dense CRF, {k} worker process(es)', res[f'crf-w{k}'], n,
                     f'first image with worker start-up {startup[k]:.2f} s')
    ks = sorted(pools)
    base = res[f'crf-w{ks[0]}'].seconds
    for k in ks[1:]:
        bench.ratio(f'dense CRF images/s, {k} workers / {ks[0]}', base / res[f'crf-w{k}'].seconds,
                    TARGET_CRF_SCALING if (k, ks[0]) == (2, 1) else None, at_least=True,
                    detail=f'{os.cpu_count()} cores visible')


def write_photos(folder: str, count: int, hw: Tuple[int, int]) -> None:
    """``count`` JPEGs at ``hw`` from the demo photos (mirrored after the first
    round, so that no two files are equal)."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    names = sorted(f for f in os.listdir(DEMO_PHOTOS) if f.endswith(('.jpg', '.png')))
    for i in range(count):
        with Image.open(osp.join(DEMO_PHOTOS, names[i % len(names)])) as img:
            img = img.convert('RGB').resize((hw[1], hw[0]), Image.BICUBIC)
        if (i // len(names)) % 2:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img.save(osp.join(folder, f'photo{i:04d}.jpg'), quality=90)


def photo_batch(folder: str, patch: int, device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:
    """The folder's photos as the tagging pipeline and data preprocessor give
    them to the model: bicubic resize to the patch multiple, CLIP-normalised."""
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


def run_e2e(bench: Bench, tagger, ckpt: str, work_dir: str, patch: int,
            dtype: torch.dtype) -> None:
    """``tools/test.py`` tagging a folder of photos, data loading, writers and
    hooks included, beside the model alone on the same photos.

    Two runs on ``--e2e-images`` and half as many photos; the difference of
    their wall times over the difference of their image counts is the
    per-image cost with the start-up (imports, model load, cached text
    embeddings) cancelled out.
    """
    args = bench.args
    big, small = args.e2e_images, args.e2e_images // 2
    root = osp.join(work_dir, 'e2e')
    folders = {n: osp.join(root, f'photos{n}') for n in (small, big)}
    for n, folder in folders.items():
        write_photos(folder, n, args.e2e_size)
    # The tool must import the package this script imported.
    import tagclip_mmseg
    package_root = osp.dirname(osp.dirname(osp.abspath(tagclip_mmseg.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_root] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    if args.threads:
        env['OMP_NUM_THREADS'] = str(args.threads)
    templates = "model.templates=['a photo of a {}.']"  # as build_tagger
    run_index = iter(range(10**6))

    def run(n: int) -> None:
        i = next(run_index)
        cmd = [
            sys.executable, osp.join(ROOT, 'tools', 'test.py'), FOLDER_CONFIG, '--work-dir',
            osp.join(root, f'work{i}'), '--cfg-options', f'model.clip.checkpoint={ckpt}',
            f'model.clip.dtype={args.dtype}', f'model.quirks={args.quirks}', templates,
            f'model.text_cache_dir={osp.join(work_dir, "text_cache")}',
            f'test_dataloader.dataset.data_root={folders[n]}',
            f'test_dataloader.batch_size={args.e2e_batch_size}',
            f'test_dataloader.num_workers={args.loader_workers}',
            f'test_evaluator.0.out_file={osp.join(root, f"tags{i}.txt")}',
            f'test_evaluator.0.scores_file={osp.join(root, f"tags{i}.scores.jsonl")}'
        ]
        if args.autocast:
            cmd.append(f'model.autocast={args.autocast}')
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode:
            raise RuntimeError(f'tools/test.py failed (exit {proc.returncode}):\n'
                               f'{(proc.stdout + proc.stderr)[-3000:]}')

    res = bench.measure({'e2e-small': lambda: run(small), 'e2e-big': lambda: run(big)})
    photos = photo_batch(folders[big], patch, bench.device, dtype)
    B = args.e2e_batch_size
    # The images per forward that tools/test.py's predict uses for a batch of
    # B (one at a time on the CPU, the whole batch elsewhere), so the ratio
    # compares the same model work.
    step = tagger.forward_batch_size(photos.device, B)
    model = bench.measure({'model': lambda: [tagger.tag(c) for c in photos.split(step)]})['model']
    extra = res['e2e-big'].seconds - res['e2e-small'].seconds
    per_image = extra / (big - small)
    h, w = args.e2e_size
    size = size_label(rounded((h, w), patch), patch)
    bench.ratio(f'tools/test.py tagging, {w}x{h} photos', 1 / per_image if extra > 0 else 0.,
                unit='img/s', detail=f'{per_image:.3f} s/img from runs on {small} and {big} '
                f'photos ({res["e2e-small"].seconds:.1f} s, {res["e2e-big"].seconds:.1f} s); '
                f'batch {B}, {args.loader_workers} data-loader workers')
    bench.timing(f'tag fast, model only, same photos, {size}', model, len(photos),
                 f'{step} image(s) per forward, as tools/test.py at batch {B}')
    bench.ratio('tools/test.py / model only (s per image)', per_image / (model.seconds / big),
                detail='data loading, writers and hooks included')


def machine_line(bench: Bench, args: argparse.Namespace) -> str:
    if bench.device.type == 'cuda':
        where = torch.cuda.get_device_name(bench.device)
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as f:
                m = re.search(r'^model name\s*:\s*(.+)$', f.read(), re.M)
            cpu = m.group(1) if m else cpu
        except OSError:
            pass
        where = f'{cpu}, {torch.get_num_threads()} threads, {os.cpu_count()} cores visible'
    arch = 'tiny random CLIP' if args.tiny else 'ViT-B/16-shaped random CLIP'
    load = ''
    if hasattr(os, 'getloadavg'):
        load = ' | load avg %.1f %.1f %.1f' % os.getloadavg()
    precision = args.dtype + (f' + {args.autocast} autocast' if args.autocast else '')
    return (f'# torch {torch.__version__} | {args.device}: {where}{load} | {precision} | '
            f'{arch} | quirks={args.quirks} | batch {args.batch_size} | {args.statistic} of '
            f'{args.repeats} round-robin runs')


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        probe_main(args)
        return
    import tagclip_mmseg  # noqa: F401  (registers the models)
    tmp = None
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
        work_dir = args.work_dir
    else:
        tmp = tempfile.TemporaryDirectory(prefix='tagclip_benchmark_')
        work_dir = tmp.name
    try:
        run_all(args, work_dir)
    finally:
        if tmp is not None:
            tmp.cleanup()


def run_all(args: argparse.Namespace, work_dir: str) -> None:
    bench = Bench(args)
    device = bench.device
    torch.manual_seed(args.seed)
    ckpt = make_checkpoint(work_dir, args.tiny, args.seed)
    cache_dir = osp.join(work_dir, 'text_cache')
    print(machine_line(bench, args), flush=True)
    parts = set(args.parts)
    faithful = not args.no_faithful
    tagger = build_tagger(args, ckpt, cache_dir, device)
    tagger.classifier()  # text embeddings are a one-off cost, timed under 'prompts'
    vit = tagger.clip.visual
    patch, dtype = vit.patch_size, tagger.clip.dtype
    B = args.batch_size
    if parts & {'backbone', 'tag', 'cam'}:
        images = random_images(args, args.size, patch, B, device, dtype)
        size = size_label(tuple(images.shape[-2:]), patch)
        fns = {'backbone': torch.no_grad()(lambda: vit(images))}
        crops = 0
        if 'tag' in parts:
            tag_fns, crops = tagging_fns(tagger, images, '', faithful=faithful)
            fns.update(tag_fns)
        labeler = None
        if 'cam' in parts:
            labeler = build_labeler(args, ckpt, cache_dir, device)
            labeler.text_embeddings(labeler.class_names + labeler.background_words,
                                    labeler.templates)
            fns.update(cam_fns(labeler, images, args.cam_tags, faithful=faithful))
        res = bench.measure(fns)
        bench.timing(f'backbone forward, {size}', res['backbone'], B, 'fused attention, no maps')
        if 'tag' in parts:
            report_tagging(bench, res, '', size, B, crops, tagger.cwr_crop_size)
        if labeler is not None:
            report_cams(bench, res, size, B)
        del labeler, fns, res
        gc.collect()
    if parts & {'large', 'large-faithful'}:
        large = random_images(args, args.large_size, patch, B, device, dtype)
        size = size_label(tuple(large.shape[-2:]), patch)
        fns = {'backbone@large': torch.no_grad()(lambda: vit(large))}
        tag_fns, crops = tagging_fns(tagger, large, '@large',
                                     faithful=faithful and 'large-faithful' in parts)
        fns.update(tag_fns)
        res = bench.measure(fns)
        bench.timing(f'backbone forward, {size}', res['backbone@large'], B,
                     'fused attention, no maps')
        report_tagging(bench, res, '@large', size, B, crops, tagger.cwr_crop_size)
        del large, fns, res
    if 'batching' in parts:
        labeler = build_labeler(args, ckpt, cache_dir, device)
        run_batching(bench, tagger, labeler, patch, dtype)
        del labeler
        gc.collect()
    if 'e2e' in parts:
        run_e2e(bench, tagger, ckpt, work_dir, patch, dtype)
    if 'crf' in parts:
        run_crf(bench)
    if 'prompts' in parts:
        run_prompts(bench, tagger.clip, work_dir)
    del tagger, vit
    gc.collect()
    if 'memory' in parts:
        run_memory(bench, ckpt, work_dir, patch)
    if hasattr(os, 'getloadavg'):
        print('# load avg at the end %.1f %.1f %.1f' % os.getloadavg())


if __name__ == '__main__':
    main()
