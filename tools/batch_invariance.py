"""Measure how much one image's outputs depend on the rest of its batch.

Runs the TagCLIP tagger and the CLIP-ES pseudo-labeler on the same images
once one image at a time and once in batches of ``--batch-size``, and prints,
per stage, the largest absolute difference between the two runs:

* tagging: coarse patch scores, DMAR-refined scores, local (max-pooled)
  scores, CWR's global scores, fused scores, and how many tags differ;
* CAMs: normalised Grad-CAMs, affinity-refined CAMs at patch resolution and
  the share of mask pixels whose label differs.

This is how the determinism contract of ``docs/determinism.md`` was
measured. Run it under other CPU code paths to see how kernels picked by
matrix shape move the figures, e.g.::

    python tools/batch_invariance.py
    MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 python tools/batch_invariance.py
    MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41 python tools/batch_invariance.py
    python tools/batch_invariance.py --device cuda --batch-size 32

With ``--save FILE`` the batch-1 outputs are kept; ``--against FILE`` then
also prints the differences to them, e.g. between two instruction sets,
thread counts or machines (same images, weights and settings).

By default it uses ViT-B/16-shaped random weights (the figures are then
about rounding, not about meaningful tags); ``--checkpoint`` takes real ones.
"""
import argparse
import glob
import os.path as osp
import tempfile
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

#: The CLIP normalisation (the data preprocessor's defaults).
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from tagclip_mmseg.utils.cli import add_quirks_args, quirks_from_args

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', default=osp.join(osp.dirname(__file__), '..', 'demo',
                                                     'images'),
                        help='folder of photos (resized to --size); default: demo/images')
    parser.add_argument('--num-images', type=int, default=8)
    parser.add_argument('--size', default='240x320', help='HxW, multiples of 16')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--checkpoint', help='CLIP weights; default: random ViT-B/16 shape')
    parser.add_argument('--tiny', action='store_true', help='narrow 12-layer random CLIP')
    add_quirks_args(parser)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--autocast', default=None, choices=(None, 'bf16', 'fp16'))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--save', help='write the batch-1 outputs to this file')
    parser.add_argument('--against', help='also compare with outputs saved by --save')
    args = parser.parse_args(argv)
    quirks_from_args(parser, args)
    return args


def report(title: str, a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    """Print max |delta| per stage, tag disagreements and mask pixel changes."""
    print(title)
    for key in ('p_coarse', 'p_ref', 'p_local', 'p_global', 'p_final', 'cams', 'refined'):
        stage = 'cam ' if key in ('cams', 'refined') else 'tag '
        print(f'  {stage} {key:9s} max|delta| {(a[key] - b[key]).abs().max().item():.3e}')
    print(f'  tag  tags      differing (image, class) pairs '
          f'{int((a["tags"] != b["tags"]).sum())} of {a["tags"].numel()}')
    diff = (a['labels'] != b['labels'])
    per_image = diff.flatten(1).float().mean(1)
    print(f'  cam  labels    differing pixels {100 * diff.float().mean().item():.4f}% '
          f'(worst image {100 * per_image.max().item():.4f}%)')


def load_images(folder: str, num: int, size: str) -> torch.Tensor:
    """``num`` photos (cycled if the folder has fewer), resized and normalised."""
    h, w = (int(v) for v in size.lower().split('x'))
    paths = sorted(p for ext in ('jpg', 'jpeg', 'png') for p in glob.glob(osp.join(folder,
                                                                                 f'*.{ext}')))
    if not paths:
        raise SystemExit(f'no .jpg/.jpeg/.png images in {folder}')
    out = []
    for i in range(num):
        with Image.open(paths[i % len(paths)]) as im:
            im = im.convert('RGB').resize((w, h), Image.BICUBIC)
            if i >= len(paths):  # a cycled photo: flip it so it is a new image
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
        arr = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.).permute(2, 0, 1)
        out.append((arr - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    return torch.stack(out)


def build_models(args: argparse.Namespace, work_dir: str):
    from tagclip_mmseg.models.clip import load_clip
    from tagclip_mmseg.models.clip.random_clip import NARROW_CLIP_ARCH, random_clip
    from tagclip_mmseg.testing.models import VOC_LABELER, VOC_TAGGER, build_labeler, build_tagger

    ckpt = args.checkpoint
    if ckpt is None:
        ckpt = osp.join(work_dir, 'clip.pth')
        random_clip(args.seed, ckpt, **(NARROW_CLIP_ARCH if args.tiny else {}))
    clip = load_clip(ckpt)
    common = dict(text_cache_dir=osp.join(work_dir, 'cache'), autocast=args.autocast)
    tagger = build_tagger(clip, args.quirks, **VOC_TAGGER, **common)
    labeler = build_labeler(clip, args.quirks, **VOC_LABELER, **common)
    return tagger.to(args.device), labeler.to(args.device)


def run_tagger(tagger, images: torch.Tensor, batch: int) -> Dict[str, torch.Tensor]:
    keys = ('p_coarse', 'p_ref', 'p_local', 'p_global', 'p_final', 'tags')
    parts: Dict[str, List[torch.Tensor]] = {k: [] for k in keys}
    for s in range(0, len(images), batch):
        chunk = images[s:s + batch]
        with tagger.autocast_context(chunk.device):
            out = tagger.tag(chunk)
        for k in keys:
            parts[k].append(getattr(out, k).float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def run_labeler(labeler, images: torch.Tensor, tags: List[List[int]],
                batch: int) -> Dict[str, torch.Tensor]:
    from mmseg.structures import SegDataSample

    from tagclip_mmseg.models.pseudo_labelers.clip_es import tag_pairs
    cams, refined, labels = [], [], []
    hw = tuple(images.shape[-2:])
    for s in range(0, len(images), batch):
        chunk, chunk_tags = images[s:s + batch], tags[s:s + batch]
        with labeler.autocast_context(chunk.device):
            ref, grid = labeler.compute_cams(chunk, chunk_tags)
            vit = labeler.clip.visual
            with torch.no_grad():
                hidden = vit.forward_until(
                    chunk, vit.num_layers - 1,
                    round_pos_embed_fp16=labeler.round_pos_embed_fp16).hidden
            pair_img, pair_cls, _ = tag_pairs(chunk_tags, chunk.device)
            raw, _ = labeler.grad_cam(hidden, pair_img, pair_cls, chunk_tags)
        cams.append(raw.float().cpu())
        k = max(len(t) for t in tags)
        refined.append(torch.nn.functional.pad(ref.float().cpu(), (0, 0, 0, 0, 0,
                                                                   k - ref.shape[1])))
        samples = []
        for t in chunk_tags:
            sample = SegDataSample()
            sample.set_metainfo(dict(tags=t, ori_shape=hw, img_path='x.jpg'))
            samples.append(sample)
        labeler.predict(list(chunk), samples)
        labels += [s.pred_sem_seg.data.cpu() for s in samples]
    return dict(cams=torch.cat(cams), refined=torch.cat(refined), labels=torch.stack(labels))


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    images = load_images(args.images, args.num_images, args.size).to(args.device)
    with tempfile.TemporaryDirectory() as work_dir:
        tagger, labeler = build_models(args, work_dir)
        one = run_tagger(tagger, images, 1)
        many = run_tagger(tagger, images, args.batch_size)
        # The same tags for both CAM runs, so the CAM figures isolate the CAM stage.
        tags = [t.nonzero().flatten().tolist() or [0] for t in one['tags'].bool()]
        one.update(run_labeler(labeler, images, tags, 1))
        many.update(run_labeler(labeler, images, tags, args.batch_size))
    report(f'images: {len(images)} x {tuple(images.shape[-2:])}, device {args.device}, '
           f'quirks {args.quirks}, autocast {args.autocast}, threads {torch.get_num_threads()}\n'
           f'batch 1 against batch {args.batch_size}:', one, many)
    if args.save:
        torch.save(one, args.save)
    if args.against:
        report(f'batch 1 against the batch-1 outputs in {args.against}:', one,
               torch.load(args.against, weights_only=True))


if __name__ == '__main__':
    main()
