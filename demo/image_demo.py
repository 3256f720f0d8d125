r"""Tag images with TagCLIP, draw CLIP-ES CAMs and pseudo masks, and build a web page.

Examples::

    # the bundled photos, VOC's 20 classes (what `make demo` runs)
    python demo/image_demo.py demo/images --out-dir demo/outputs

    # your own vocabulary and weights, on a GPU
    python demo/image_demo.py photos/ --classes cat dog "traffic light" \
        --checkpoint ~/weights/ViT-B-16.pt --device cuda --out-dir out

    # a name file: one class per line, synonyms after ',' (or '; ')
    python demo/image_demo.py photos/ --classes my_classes.txt --out-dir out

For every image, ``OUT_DIR/<image>/`` receives ``tags.jpg`` (tags and scores
drawn on the photo), ``cam_<k>_<class>.jpg`` (one heat map per tag) and
``mask.jpg`` (the pseudo mask with a legend); ``OUT_DIR/index.html`` shows them
side by side and ``OUT_DIR/results.json`` holds the tags and scores.

Without ``--checkpoint``, the demo uses ``~/.cache/clip/ViT-B-16.pt`` and
fetches OpenAI's ViT-B/16 into it when it is missing. When that fails
(offline, no network), it runs a PIPELINE CHECK on a random-weight CLIP (see
:mod:`tagclip_mmseg.apis.pipeline_check`): everything runs, nothing it shows
means anything, and both the console and the page say so.
"""
import argparse
import json
import os.path as osp
import sys
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

import torch

from tagclip_mmseg.apis import TagCLIPInferencer, expand_inputs, write_pipeline_check_checkpoint
from tagclip_mmseg.apis.model_configs import load_model_config
from tagclip_mmseg.models.clip.checkpoint import DEFAULT_CLIP_CHECKPOINT
from tagclip_mmseg.models.clip.presets import resolve_background, resolve_classes
from tagclip_mmseg.utils import atomic_write_text, ensure_writable_dir, iter_dicts
from tagclip_mmseg.utils.cli import NAME_FILE_HELP, FlagHelpFormatter
from tagclip_mmseg.utils.fetch import (CHECKPOINT_HELP, DEFAULT_CLIP_NAME, OPENAI_CLIP_URLS,
                                       FetchError, resolve_checkpoint)
from tagclip_mmseg.utils.name_files import is_name_file_path, read_name_file
from tagclip_mmseg.visualization import ReportEntry, write_index_html

PIPELINE_CHECK_TITLE = 'PIPELINE CHECK: random weights, results are meaningless'
#: Drawn on every tag picture of a pipeline check (short enough for small photos).
PIPELINE_CHECK_STAMP = 'PIPELINE CHECK: random weights'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Tag images with TagCLIP and show CLIP-ES CAMs and pseudo masks on a web '
        'page (OUT_DIR/index.html).')
    parser.add_argument('inputs', nargs='+', help='image files and/or folders of images')
    parser.add_argument('--out-dir', required=True, help='output folder (created if needed)')
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument('--classes', nargs='+', metavar='NAME',
                       help='class names (quote names with spaces), or one name file. Default: '
                       "the config's classes, else the 20 PASCAL VOC classes")
    vocab.add_argument('--classes-file', metavar='FILE', help='a name file (as --classes FILE)')
    parser.add_argument('--classes-sep', metavar='SEP',
                        help='separator of synonyms in the classes name file (default: detected)')
    parser.add_argument('--background-line', action='store_true',
                        help='line 1 of the classes name file is the background class (the '
                        "peers' cls_voc21.txt): its names become the background words unless "
                        '--background-words is given')
    parser.add_argument('--background-words', nargs='*', metavar='WORD',
                        help='softmax competitors such as sky, road, wall, or one name file '
                        "(give the flag alone for none). Default: VOC's 25 words minus any "
                        'that is a class')
    parser.add_argument('--background-words-sep', metavar='SEP',
                        help='separator in the background-words name file (default: detected)')
    parser.epilog = NAME_FILE_HELP
    parser.formatter_class = FlagHelpFormatter
    parser.add_argument('--config', help='a configs/tagclip/ or configs/pseudo_labelers/ config '
                        '(path or name) for the model settings')
    parser.add_argument('--checkpoint',
                        help=f"{CHECKPOINT_HELP}. Default: the config's, else "
                        f'{DEFAULT_CLIP_CHECKPOINT} (fetched as {DEFAULT_CLIP_NAME} when '
                        'missing)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='cpu, cuda or cuda:N (default: cuda when available)')
    parser.add_argument('--truncate-prompts', action='store_true',
                        help="cut prompts of class names longer than CLIP's 77-token context "
                        '(with a warning) instead of stopping')
    parser.add_argument('--batch-size', type=int, default=1,
                        help='images per forward; only equal-size images share a batch')
    return parser.parse_args(argv)


def configured_checkpoint(args: argparse.Namespace) -> str:
    """The CLIP weights this run would use: flag, then config, then OpenAI's path."""
    if args.checkpoint:
        return args.checkpoint
    if args.config:
        for d in iter_dicts(load_model_config(args.config).get('model', {})):
            clip = d.get('clip')
            if isinstance(clip, dict) and clip.get('checkpoint'):
                return clip['checkpoint']
    return DEFAULT_CLIP_CHECKPOINT


def _name_file(values: Optional[List[str]]) -> Optional[str]:
    """The name file that ``values`` consist of, if they are one."""
    return values[0] if values and len(values) == 1 and is_name_file_path(values[0]) else None


def vocabulary(args: argparse.Namespace):
    """(classes, background words) to pass to the inferencer (None: its default)."""
    classes, words = args.classes, args.background_words
    class_file = args.classes_file or _name_file(classes)
    if args.background_line and not class_file:
        raise ValueError('--background-line needs a classes name file')
    if class_file:
        names = read_name_file(class_file, args.classes_sep,
                               'background' if args.background_line else 'class')
        classes = names.classes()
        if args.background_line and words is None:
            words = names.background_words()
    words_file = _name_file(words)
    if words_file:
        words = read_name_file(words_file, args.background_words_sep).background_words()
    if classes is None and not args.config:
        classes = list(resolve_classes('voc'))
        words = list(resolve_background('voc')) if words is None else words
    return classes, words


def pipeline_check_banner(missing: str, why: str = '') -> tuple:
    return (PIPELINE_CHECK_TITLE, [
        f'No CLIP checkpoint was found at {missing} and none was given with --checkpoint'
        + (f' ({why})' if why else '') + ', so this run used a CLIP with RANDOM weights '
        '(ViT-B/16 layout, narrow width so that it runs in seconds on a CPU) only to check '
        'that loading, tagging, CAMs, masks and this page work.',
        'The tags, scores, heat maps and masks shown are meaningless. Do not read anything into '
        'them.',
        f'For real results, run the demo where it can fetch {DEFAULT_CLIP_NAME} (it then '
        f'fetches and verifies {DEFAULT_CLIP_CHECKPOINT} once), or fetch '
        f'{OPENAI_CLIP_URLS[DEFAULT_CLIP_NAME]} on another machine and put it at '
        f'{DEFAULT_CLIP_CHECKPOINT}, or pass --checkpoint PATH (an OpenAI .pt, an open_clip or '
        'Hugging Face CLIP checkpoint, or a .pth converted with '
        'tools/convert_clip_checkpoint.py), and run the demo again.'
    ])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.batch_size < 1:
        print(f'error: --batch-size must be positive, got {args.batch_size}', file=sys.stderr)
        return 2
    try:
        out_dir = ensure_writable_dir(args.out_dir)
        items = expand_inputs(args.inputs)
        classes, words = vocabulary(args)
        checkpoint = configured_checkpoint(args)
    except (OSError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    why = ''
    try:
        # Names and URLs are fetched (once, verified); so is the default file.
        checkpoint = resolve_checkpoint(checkpoint, DEFAULT_CLIP_CHECKPOINT)
    except FetchError as e:
        if args.checkpoint:
            print(f'error: {e}', file=sys.stderr)
            return 2
        why = f'fetching it failed: {e}'
    pipeline_check = not args.checkpoint and not osp.exists(osp.expanduser(checkpoint))
    with tempfile.TemporaryDirectory(prefix='tagclip_demo_') as tmp:
        banner = None
        cache_dir = None
        if pipeline_check:
            banner = pipeline_check_banner(checkpoint, why)
            rule = '!' * 78
            print(f'{rule}\n{banner[0]}\n' + '\n'.join(banner[1]) + f'\n{rule}', flush=True)
            # Random weights and their text embeddings stay in a temporary
            # folder: nothing meaningless reaches the user's caches.
            checkpoint = write_pipeline_check_checkpoint(osp.join(tmp, 'random_clip.pth'))
            cache_dir = osp.join(tmp, 'text_cache')
        start = time.perf_counter()
        try:
            inferencer = TagCLIPInferencer(
                model=args.config, checkpoint=checkpoint, device=args.device,
                batch_size=args.batch_size, classes=classes, background_words=words,
                with_cams=True, text_cache_dir=cache_dir, on_error='skip',
                truncate_prompts=args.truncate_prompts)
        # Missing, corrupt, unsafe (pickled code) or wrong-shaped weights
        # (CheckpointError is a ValueError), a bad config or vocabulary: one
        # line, no traceback.
        except (OSError, ValueError) as e:
            print(f'error: {e}', file=sys.stderr)
            return 2
        print(f'model ready in {time.perf_counter() - start:.1f} s: '
              f'{len(inferencer.classes)} classes, device {args.device}, weights '
              f'{"RANDOM (pipeline check)" if pipeline_check else checkpoint}', flush=True)
        results, elapsed = run(inferencer, items, out_dir,
                               PIPELINE_CHECK_STAMP if pipeline_check else None)
    write_outputs(out_dir, results, inferencer.classes, banner,
                  notes=[f'Weights: {"random (pipeline check)" if pipeline_check else checkpoint}',
                         f'Device: {args.device}; {len(inferencer.classes)} classes: '
                         + ', '.join(inferencer.classes)])
    failed = sum(r['error'] is not None for r in results)
    print(f'Done: {len(results)} images ({failed} failed) in {elapsed:.1f} s, '
          f'{len(results) / max(elapsed, 1e-9):.2f} images/s. Open '
          f'{osp.join(out_dir, "index.html")}'
          + ('  [PIPELINE CHECK: random weights]' if pipeline_check else ''), flush=True)
    return 1 if failed == len(results) else 0


def run(inferencer: TagCLIPInferencer, items: list, out_dir: str,
        title: Optional[str]) -> Tuple[List[dict], float]:
    """Run the inferencer, printing one progress line per image.

    Returns:
        tuple: Results in input order and the seconds they took.
    """
    total = len(items)
    width = len(str(total))
    results = {}
    start = time.perf_counter()
    for done, (index, result) in enumerate(
            inferencer.iter_results(items, return_cams=True, return_mask=True, out_dir=out_dir,
                                    title=title), 1):
        now = time.perf_counter()
        results[index] = result
        name = result['img_path'] or f'array {index}'
        if result['error']:
            what = f'SKIPPED: {result["error"]}'
        else:
            what = 'tags: ' + ', '.join(f'{t} ({result["scores"][t]:.3f})' for t in result['tags'])
        print(f'[{done:>{width}}/{total}] {osp.basename(name)}  {what}  '
              f'| {done / (now - start):.2f} images/s', flush=True)
    return [results[i] for i in sorted(results)], time.perf_counter() - start


def write_outputs(out_dir: str, results: List[dict], classes: List[str], banner,
                  notes: List[str]) -> None:
    """``index.html`` over the pictures and ``results.json`` with tags and scores."""
    entries = [
        ReportEntry(
            name=osp.basename(r['img_path']) if r['img_path'] else f'array {r["index"]}',
            source=r['img_path'], tags=r['tags'], scores=r['scores'],
            images=r.get('visualization') or [], error=r['error']) for r in results
    ]
    write_index_html(osp.join(out_dir, 'index.html'), entries, title='TagCLIP demo',
                     banner=banner, notes=notes)
    summary = dict(
        pipeline_check=banner is not None, classes=classes,
        images=[{k: r[k] for k in ('img_path', 'tags', 'scores', 'error')} for r in results])
    atomic_write_text(osp.join(out_dir, 'results.json'), json.dumps(summary, indent=1) + '\n')


if __name__ == '__main__':
    sys.exit(main())
