"""Text embeddings: a first launch and a second one that hits the on-disk cache."""
import tempfile
import time

import torch

from .timer import Bench

__all__ = ['run_prompts']


def run_prompts(bench: Bench, clip, work_dir: str) -> None:
    """Print the text-embedding time of a first and a cached second launch.

    Args:
        bench (Bench): The shared timer (``--full-prompts``).
        clip (nn.Module): The timed CLIP.
        work_dir (str): Parent of the fresh cache folder.
    """
    from tagclip_mmseg.models.clip.presets import (resolve_background, resolve_classes,
                                                   resolve_templates)
    from tagclip_mmseg.models.clip.text_classifier import build_text_classifier
    classes = resolve_classes('voc') + resolve_background('voc')
    templates = resolve_templates('tagclip')
    full = len(classes) * len(templates)
    if not bench.args.full_prompts:
        classes, templates = classes[:3], templates[:bench.args.prompt_templates]
    n = len(classes) * len(templates)
    seconds = []
    # A fresh cache, so that a reused --work-dir cannot make the first launch a hit.
    with tempfile.TemporaryDirectory(dir=work_dir) as cache_dir, torch.no_grad():
        for _ in range(2):
            bench.sync()
            start = time.perf_counter()
            build_text_classifier(clip, classes, templates, cache_dir=cache_dir)
            bench.sync()
            seconds.append(time.perf_counter() - start)
    first, second = seconds
    est = '' if n == full else f'; {full} prompts (VOC x 85 templates) ~ {first / n * full:.0f} s'
    bench.ratio(f'text embeddings, first launch ({n} prompts)', first, unit='s',
                detail=f'{n / first:.1f} prompts/s{est}')
    bench.ratio('text embeddings, second launch (cache hit)', second, 'cache_hit_s', unit='s',
                detail=f'{len(classes)} classes read from the on-disk cache')
