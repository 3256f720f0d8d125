"""One large image through an open-vocabulary config: seconds and peak memory."""
import argparse
import os.path as osp
import tempfile
import time
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS, MODELS, TRANSFORMS
from mmseg.structures import SegDataSample

import tagclip_mmseg  # noqa: F401  (registers the plugin)
from tagclip_mmseg.models.segmentors import slide_windows

from .inputs import make_checkpoint, parse_size
from .timer import MemoryMeter

__all__ = ['parse_args', 'main']

DEFAULT_CONFIG = 'configs/open_vocab/tagclip_vit-b16_cityscapes.py'
#: Tagger and labeler settings for the tiny random CLIP (``--tiny``): its
#: 64-pixel crop size and fewer layers.
TINY_MODEL = dict(tagger=dict(avg_layers=[0, 1], vote_k=2, cwr_crop_size=64),
                  labeler=dict(caa_layers=[0, 1, 2]))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line of ``tools/benchmark_open_vocab.py``."""
    parser = argparse.ArgumentParser(
        description='Time and size one large image through an open-vocabulary config')
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--clip-checkpoint', help='real CLIP weights (default: random ones)')
    parser.add_argument('--size', type=parse_size, default=(1024, 2048),
                        help='original image size HxW (Cityscapes: 1024x2048)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='fp32', choices=['fp32', 'fp16', 'bf16'])
    parser.add_argument('--all-classes-as-tags', action='store_true',
                        help='a CAM for every class (the most work per window)')
    parser.add_argument('--inference', choices=['slide', 'whole'],
                        help="override the config's test_cfg.inference")
    parser.add_argument('--tiny', action='store_true', help='tiny random CLIP (seconds)')
    parser.add_argument('--work-dir', help='checkpoint and text cache (default: a temp dir)')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace, work_dir: str) -> Tuple[torch.nn.Module, Config]:
    """The config's ``TagCLIPSegmentor`` with one template, and the config."""
    cfg = Config.fromfile(args.config)
    ckpt = args.clip_checkpoint or make_checkpoint(work_dir, args.tiny, args.seed)
    model_cfg = cfg.model
    model_cfg.clip = dict(checkpoint=ckpt, dtype=args.dtype)
    model_cfg.text_cache_dir = osp.join(work_dir, 'text_cache')
    model_cfg.all_classes_as_tags = args.all_classes_as_tags
    for part in ('tagger', 'labeler'):
        model_cfg[part]['templates'] = ['a photo of a {}.']
        if args.tiny:
            model_cfg[part].update(TINY_MODEL[part])
    if args.inference:
        model_cfg.test_cfg['inference'] = args.inference
    model = MODELS.build(model_cfg).to(args.device).eval()
    if model.class_names is None:
        dataset = DATASETS.get(cfg.test_dataloader.dataset.type)
        model.set_vocabulary(dataset.METAINFO['classes'])
    return model, cfg


def make_input(cfg: Config, size: Tuple[int, int], seed: int) -> dict:
    """A random BGR image after the config's resize, packed like PackSegInputs."""
    img = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    results = dict(img=img, img_shape=size, ori_shape=size)
    for t in cfg.test_dataloader.dataset.pipeline:
        if t['type'] == 'Resize':
            results = TRANSFORMS.build(t)(results)
    sample = SegDataSample(metainfo=dict(ori_shape=size, img_shape=results['img_shape']))
    inputs = torch.from_numpy(np.ascontiguousarray(results['img'].transpose(2, 0, 1)))
    return dict(inputs=[inputs], data_samples=[sample])


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Print the run's seconds, peak memory and ``PEAK_ABOVE_MODEL_MIB <n>``."""
    args = parse_args(argv)
    init_default_scope('mmseg')
    with tempfile.TemporaryDirectory() as tmp:
        work_dir = args.work_dir or tmp
        model, cfg = build_model(args, work_dir)
        data = make_input(cfg, args.size, args.seed)
        meter = MemoryMeter(torch.device(args.device))
        with torch.no_grad():  # warm-up: text embeddings, lazy buffers
            model.test_step(make_input(cfg, (64, 64), args.seed))
        meter.reset()
        base = meter.current()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.test_step(data)[0]
        if args.device.startswith('cuda'):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = meter.peak()
    h, w = data['inputs'][0].shape[-2:]
    tcfg = model.test_cfg
    windows = len(slide_windows(h, w, tcfg['crop_size'], tcfg['stride'])) \
        if tcfg['inference'] == 'slide' else 1
    mib = 1 << 20
    print(f'config {args.config}: image {args.size[0]}x{args.size[1]} -> input {h}x{w}, '
          f"{tcfg['inference']} inference, {windows} windows, {len(out.tags)} tags, "
          f'{model.num_classes} output channels')
    print(f'time {seconds:.2f} s; {meter.what} {peak / mib:.0f} MiB, of which '
          f'{(peak - base) / mib:.0f} MiB above the loaded model')
    print(f'PEAK_ABOVE_MODEL_MIB {(peak - base) / mib:.0f}')
