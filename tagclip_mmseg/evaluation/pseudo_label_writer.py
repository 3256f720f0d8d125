"""Writes pseudo masks (and optionally CAMs) as the test loop produces them.

Each rank writes its own share in ``process``; rank 0 writes ``summary.json``
and ``failed.txt`` (``img_id<TAB>img_path<TAB>reason``) from the gathered
records, so ``written + skipped + failed`` covers every listed image. Every
file is atomic and byte-deterministic; see docs/resume.md, "Output writers".
"""
import hashlib
import io
import json
import os.path as osp
import zipfile
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.logging import MMLogger
from mmseg.registry import METRICS
from PIL import Image

from ..records import (SourceLog, get_field, image_id, load_error, pixel_data,
                       remove_stale_temp_files, sources_path)
from ..utils.checks import check_finite
from ..utils.class_names import voc_palette
from ..utils.io import atomic_write_bytes, atomic_write_text
from ..utils.paths import safe_join
from .output_writer import OutputWriter
from .summary import format_summary

__all__ = ['encode_label_png', 'encode_npz', 'PseudoLabelWriter']

PaletteSpec = Union[str, Sequence[Sequence[int]], None]


def encode_label_png(mask: np.ndarray, palette: Optional[np.ndarray] = None) -> bytes:
    """PNG bytes of a ``(H, W)`` uint8 label map.

    Args:
        mask: Label indices.
        palette: ``(256, 3)`` uint8 colours for a ``'P'`` image; ``None`` for
            ``'L'``.

    Returns:
        The encoded file; equal inputs give equal bytes.
    """
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f'label map must be (H, W) uint8, got {mask.dtype} {mask.shape}')
    img = Image.fromarray(mask)
    if palette is not None:
        img.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tobytes())
    buf = io.BytesIO()
    img.save(buf, format='PNG', optimize=False, compress_level=6)
    return buf.getvalue()


def encode_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` with fixed zip time stamps (``np.savez`` stamps the time).

    Args:
        arrays: Name -> array.

    Returns:
        The encoded file.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(name + '.npy', date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, 'w', force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


@METRICS.register_module()
class PseudoLabelWriter(OutputWriter):
    """Write each image's ``pred_sem_seg`` as ``<out_dir>/<img_id>.png``.

    Per image (one record each, gathered to rank 0):

    * ``load_error`` in the metainfo -> ``failed`` (listed with its reason);
    * ``precomputed=True`` (set by ``SkipExisting``) -> ``skipped``, the file on
      disk is kept;
    * otherwise the mask (and the CAMs) are written -> ``written``.

    Args:
        out_dir: Output folder; created before the first image (a folder that
            cannot be written raises ``PermissionError`` then).
        palette: ``'voc'`` (default: the 256-entry VOC colormap), ``'dataset'``
            (``dataset_meta['palette']`` for the classes, the VOC colormap for
            the other entries, so 255 keeps its colour), an explicit list of
            RGB triples, or ``None`` for plain ``'L'`` PNGs.
        save_cams: Also write ``<img_id>.npz`` with the sample's ``cams``
            (float16 ``(K, H, W)``) and its ``tags`` metainfo as ``keys``.
        stale_temp_age_s: Temporaries older than this in ``out_dir`` are
            removed by :meth:`begin_run`.
        collect_device: ``'cpu'`` or ``'gpu'``, for gathering across ranks.
        prefix: Key prefix, default ``'pseudo_label'``.

    Returned keys: ``written``, ``skipped``, ``failed``.
    """
    default_prefix: Optional[str] = 'pseudo_label'

    def __init__(self,
                 out_dir: str,
                 palette: PaletteSpec = 'voc',
                 save_cams: bool = False,
                 stale_temp_age_s: float = 60.0,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        out_dir = osp.abspath(osp.expanduser(out_dir))
        super().__init__(out_dir, out_dir, collect_device, prefix)
        if isinstance(palette, str) and palette not in ('voc', 'dataset'):
            raise ValueError(f"palette must be 'voc', 'dataset', a list of RGB triples or "
                             f'None, got {palette!r}')
        self.out_dir = out_dir
        self.palette_spec = palette
        self.save_cams = save_cams
        self.stale_temp_age_s = float(stale_temp_age_s)
        self._palette: Optional[np.ndarray] = None
        self._sources: Optional[SourceLog] = None

    def output_folders(self) -> List[str]:
        """The output folder."""
        return [self.out_dir]

    def remove_temp_files(self) -> None:
        """Remove stale temporaries from ``out_dir``."""
        remove_stale_temp_files(self.out_dir, min_age_s=self.stale_temp_age_s)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Write the files of this batch on this rank; record each outcome."""
        self.start_batch()
        for sample in data_samples:
            img_id = image_id(sample)
            safe_join(self.out_dir, img_id, '.png')  # refuse an id that leaves out_dir
            record = dict(img_id=img_id, img_path=get_field(sample, 'img_path'),
                          status='written', reason=None)
            error = load_error(sample)
            if error is not None:
                record.update(status='failed', reason=error)
            elif get_field(sample, 'precomputed', False):
                record['status'] = 'skipped'
            else:
                self._write_sample(sample, img_id, pixel_data(get_field(sample, 'pred_sem_seg')))
            self.results.append(record)

    def _write_sample(self, sample, img_id: str, label: Optional[torch.Tensor]) -> None:
        mask = _label_map(label, sample, img_id)
        png = encode_label_png(mask, self._get_palette())
        path = safe_join(self.out_dir, img_id, '.png')
        if self._sources is None:
            self._sources = SourceLog(sources_path(self.out_dir, get_rank()))
        # Recorded first: a kill in between leaves a record without its PNG.
        self._sources.append(img_id, get_field(sample, 'img_path'),
                             hashlib.sha256(png).hexdigest())
        atomic_write_bytes(path, png)
        if self.save_cams:
            cams = get_field(sample, 'cams')
            if cams is None:
                raise KeyError(f'save_cams=True but image {img_id} has no "cams" field')
            cams = torch.as_tensor(cams).detach().to('cpu', torch.float16).numpy()
            keys = np.asarray(torch.as_tensor(get_field(sample, 'tags', ())).cpu(),
                              dtype=np.int64).reshape(-1)
            if cams.ndim != 3 or cams.shape[0] != keys.size or cams.shape[1:] != mask.shape:
                raise ValueError(f'image {img_id}: cams {cams.shape} must be (K, H, W) with '
                                 f'K = {keys.size} tags and (H, W) = mask {mask.shape}')
            check_finite(cams, f'image {img_id}: CAMs')
            atomic_write_bytes(safe_join(self.out_dir, img_id, '.npz'),
                               encode_npz(dict(keys=keys, attn_highres=cams)))

    def _get_palette(self) -> Optional[np.ndarray]:
        """The ``(256, 3)`` palette, resolved on first use (dataset meta is set late)."""
        if self.palette_spec is None:
            return None
        if self._palette is None:
            palette = np.asarray(voc_palette(256), dtype=np.uint8)
            spec = self.palette_spec
            if spec == 'dataset':
                spec = (self.dataset_meta or {}).get('palette')
                if spec is None:
                    raise ValueError("palette='dataset' but the dataset metainfo has no palette")
            if not isinstance(spec, str):
                colours = np.asarray(spec, dtype=np.int64).reshape(-1, 3)
                if len(colours) > 256 or colours.min() < 0 or colours.max() > 255:
                    raise ValueError('palette must be at most 256 RGB triples in [0, 255]')
                palette[:len(colours)] = colours
            self._palette = palette
        return self._palette

    def evaluate(self, size: int) -> dict:
        """Gather as ``BaseMetric`` does, then close this rank's record of mask sources."""
        try:
            return super().evaluate(size)
        finally:
            if self._sources is not None:
                self._sources.close()
                self._sources = None

    def compute_metrics(self, results: List[dict]) -> Dict[str, int]:
        """Count outcomes over all ranks, write the summary files, log one line."""
        elapsed = self.stop_timer()
        results = list(results) + [dict(m, status='failed') for m in self.left_out()]
        counts = {k: sum(r['status'] == k for r in results)
                  for k in ('written', 'skipped', 'failed')}
        failed = sorted((r for r in results if r['status'] == 'failed'),
                        key=lambda r: r['img_id'])
        atomic_write_text(osp.join(self.out_dir, 'failed.txt'), ''.join(
            f'{r["img_id"]}\t{r["img_path"]}\t{_one_line(r["reason"])}\n' for r in failed))
        summary = dict(counts, elapsed_s=round(elapsed, 3),
                       failed_images=[{k: r[k] for k in ('img_id', 'img_path', 'reason')}
                                      for r in failed])
        atomic_write_text(osp.join(self.out_dir, 'summary.json'),
                          json.dumps(summary, indent=1) + '\n')
        logger = MMLogger.get_current_instance()
        logger.info(f'pseudo labels in {self.out_dir}: ' + format_summary(counts, elapsed))
        if failed:
            logger.warning(f'{len(failed)} images failed (load errors, CRF failures); see '
                           f'{osp.join(self.out_dir, "failed.txt")}')
        return counts


def _label_map(mask: Optional[torch.Tensor], sample, img_id: str) -> np.ndarray:
    """The sample's mask as ``(H, W)`` uint8, checked against ``ori_shape``."""
    if mask is None:
        raise KeyError(f'image {img_id} has no pred_sem_seg to write')
    if mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.dim() != 2:
        raise ValueError(f'image {img_id}: pred_sem_seg must be (1, H, W) or (H, W), '
                         f'got {tuple(mask.shape)}')
    ori_shape = get_field(sample, 'ori_shape')
    if ori_shape is not None and tuple(mask.shape) != tuple(ori_shape)[:2]:
        raise ValueError(f'image {img_id}: pred_sem_seg is {tuple(mask.shape)} but the image '
                         f'is {tuple(ori_shape)[:2]}; masks must be at the original size')
    mask = mask.detach().cpu()
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) > 255):
        raise ValueError(f'image {img_id}: labels must be in [0, 255] to fit a PNG, got '
                         f'[{int(mask.min())}, {int(mask.max())}]')
    return mask.to(torch.uint8).numpy()


def _one_line(text: Optional[str]) -> str:
    return ' '.join(str(text).split())
