"""Dense CRF post-processing of CAM probabilities (docs/method.md, "Dense CRF (optional)")."""
import atexit
import multiprocessing
import threading
import weakref
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from torch import Tensor, nn

from ...utils.checks import check_range
from ...utils.init_args import RecordsInitArgs
from ...utils.quirks import Quirks, QuirksLike, resolve_quirks

__all__ = ['DenseCRF', 'PendingLabel', 'crf_reference_image', 'crf_label_map',
           'shutdown_crf_pools', 'set_label', 'collect_pending_labels']

#: Data-sample field of a :class:`PendingLabel`, within one ``predict`` call.
PENDING_LABEL_KEY = 'pred_sem_seg_pending'

#: deeplab-pytorch's BGR mean (``quirks.crf_reference_image``).
CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)


def crf_reference_image(rgb: np.ndarray) -> np.ndarray:
    """The reference's bilateral image: BGR minus the mean, wrapped to uint8."""
    bgr = rgb[..., ::-1].astype(np.float32) - np.asarray(CAFFE_BGR_MEAN, np.float32)
    return np.ascontiguousarray(bgr.astype(np.int64).astype(np.uint8))


@MODELS.register_module()
class DenseCRF(RecordsInitArgs, nn.Module):
    """Fully connected CRF over per-class probability maps.

    Args:
        iterations (int): Mean-field iterations (10; >= 1).
        gaussian_sxy (float): Smoothness kernel width (1; > 0).
        gaussian_compat (float): Smoothness weight (3; >= 0).
        bilateral_sxy (float): Appearance kernel spatial width (67; > 0).
        bilateral_srgb (float): Appearance kernel colour width (3; > 0).
        bilateral_compat (float): Appearance weight (4; >= 0).
        confidence_thr (float, optional): Below it a pixel becomes ignore.
        quirks (str | dict | Quirks): Reads ``crf_reference_image``.
        workers (int): 0 runs the CRF in process, ``N > 0`` in N workers.
    """

    def __init__(self,
                 iterations: int = 10,
                 gaussian_sxy: float = 1.,
                 gaussian_compat: float = 3.,
                 bilateral_sxy: float = 67.,
                 bilateral_srgb: float = 3.,
                 bilateral_compat: float = 4.,
                 confidence_thr: Optional[float] = None,
                 quirks: QuirksLike = 'reference',
                 workers: int = 0) -> None:
        super().__init__()
        self.quirks: Quirks = resolve_quirks(quirks)
        self.iterations = check_range('crf.iterations', iterations, 1, integer=True)
        self.gaussian = dict(sxy=check_range('crf.gaussian_sxy', gaussian_sxy, 0, low_open=True),
                             compat=check_range('crf.gaussian_compat', gaussian_compat, 0))
        self.bilateral = dict(
            sxy=check_range('crf.bilateral_sxy', bilateral_sxy, 0, low_open=True),
            srgb=check_range('crf.bilateral_srgb', bilateral_srgb, 0, low_open=True),
            compat=check_range('crf.bilateral_compat', bilateral_compat, 0))
        self.confidence_thr = check_range('crf.confidence_thr', confidence_thr, 0, 1,
                                          allow_none=True)
        self.workers = check_range('crf.workers', workers, 0, integer=True)
        self._pool = _CRFPool(workers) if workers else None
        _backend()  # fail at build time, not after an hour of CAMs

    @property
    def params(self) -> Dict[str, Any]:
        """Everything :func:`crf_label_map` needs besides the image data."""
        return dict(iterations=self.iterations, gaussian=self.gaussian,
                    bilateral=self.bilateral, confidence_thr=self.confidence_thr,
                    reference_image=self.quirks.crf_reference_image)

    def marginals(self, probs: np.ndarray, rgb: np.ndarray) -> np.ndarray:
        """Mean-field marginals (C, H, W) for probabilities and an RGB image."""
        return crf_marginals(probs, rgb, self.iterations, self.gaussian, self.bilateral,
                             self.quirks.crf_reference_image)

    def forward(self, probs: Tensor, data_sample) -> Tensor:
        """Label index per pixel (-1 where below ``confidence_thr``), in process.

        Args:
            probs (Tensor): (C, H, W) stacked [background, CAM_1..CAM_K].
            data_sample: Carries ``ori_img`` (RGB uint8) in its metainfo.
        """
        lut = np.arange(probs.shape[0], dtype=np.int64)
        idx = crf_label_map(self.params, *_crf_inputs(probs, data_sample), lut, ignore=-1)
        return torch.from_numpy(idx).to(probs.device)

    def label(self, probs: Tensor, lut: Tensor, data_sample) -> Tensor:
        """The (H, W) label map ``lut[crf index]`` (255 where not confident).

        Args:
            probs (Tensor): (C, H, W) stacked [background, CAM_1..CAM_K].
            lut (Tensor): (C,) saved label of each channel.
            data_sample: Carries ``ori_img`` in its metainfo.
        """
        label = self.submit(probs, lut, data_sample)
        return label.result() if isinstance(label, PendingLabel) else label

    def submit(self, probs: Tensor, lut: Tensor,
               data_sample) -> Union[Tensor, 'PendingLabel']:
        """Like :meth:`label`, but return a :class:`PendingLabel` with workers."""
        probs_np, rgb = _crf_inputs(probs, data_sample)
        lut_np = lut.detach().cpu().numpy().astype(np.int64)
        args = (self.params, probs_np, rgb, lut_np)
        if self._pool is None:
            return torch.from_numpy(crf_label_map(*args)).to(probs.device)
        return PendingLabel(self._pool, args, probs.device)


class PendingLabel:
    """A label map that a CRF worker is computing (resubmitted if it dies)."""

    def __init__(self, pool: '_CRFPool', args: tuple, device: torch.device) -> None:
        self._pool, self._args, self.device = pool, args, device
        self.future: Future = pool.submit(crf_label_map, *args)

    def result(self) -> Tensor:
        """The (H, W) long label map on the submitter's device; waits.

        Raises:
            RuntimeError: The CRF failed, or its worker died twice.
        """
        for attempt in range(2):
            try:
                return torch.from_numpy(self.future.result()).to(self.device)
            except BrokenProcessPool as e:
                if attempt:
                    raise RuntimeError(f'the CRF worker process died twice on this image ({e});'
                                       ' too little memory for the CRF? lower model.crf.workers'
                                       ) from e
                # Another image's worker may have died: this one gets a fresh pool.
                self.future = self._pool.submit(crf_label_map, *self._args)
            except Exception as e:  # noqa: BLE001  (anything raised inside the worker)
                raise RuntimeError(f'the CRF failed in its worker: {type(e).__name__}: {e}'
                                   ) from e
        raise AssertionError('unreachable')


Label = Union[Tensor, PendingLabel]


def set_label(data_sample, label: Label) -> None:
    """Set ``pred_sem_seg`` to a (H, W) label map, or keep a :class:`PendingLabel`."""
    if isinstance(label, PendingLabel):
        data_sample.set_field(label, PENDING_LABEL_KEY)
    else:
        data_sample.set_data(dict(pred_sem_seg=PixelData(data=label[None])))


def collect_pending_labels(data_samples: Sequence, device: Optional[str] = None) -> None:
    """Wait for every pending CRF of ``data_samples`` and set their ``pred_sem_seg``."""
    for sample in data_samples:
        pending = sample.get(PENDING_LABEL_KEY)
        if pending is None:
            continue
        label = pending.result()
        delattr(sample, PENDING_LABEL_KEY)
        set_label(sample, label if device is None else label.to(device))


def _backend():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as e:
        raise ImportError('dense CRF needs the optional pydensecrf2 package: '
                          'pip install -e ".[crf]" (or pip install pydensecrf2), '
                          'or remove crf=... from the config') from e
    return dcrf


def _crf_inputs(probs: Tensor, data_sample):
    rgb = data_sample.metainfo.get('ori_img')
    if rgb is None:
        raise KeyError("CRF needs the original image: add 'ori_img' to PackSegInputs' "
                       'meta_keys (keep_ori_img=True in the pseudo-label dataset config)')
    return probs.float().cpu().numpy(), np.asarray(rgb)


def crf_marginals(probs: np.ndarray, rgb: np.ndarray, iterations: int, gaussian: dict,
                  bilateral: dict, reference_image: bool) -> np.ndarray:
    """Mean-field marginals (C, H, W) for probabilities and an RGB image."""
    dcrf = _backend()
    C, H, W = probs.shape
    if rgb.shape[:2] != (H, W):
        raise ValueError(f'CRF image is {rgb.shape[:2]} but the maps are {(H, W)}')
    img = crf_reference_image(rgb) if reference_image else np.ascontiguousarray(
        rgb.astype(np.uint8))
    d = dcrf.DenseCRF2D(W, H, C)
    unary = -np.log(np.clip(probs, 1e-5, 1.0)).reshape(C, -1).astype(np.float32)
    d.setUnaryEnergy(np.ascontiguousarray(unary))
    d.addPairwiseGaussian(**gaussian)
    d.addPairwiseBilateral(rgbim=img, **bilateral)
    q = d.inference(iterations)
    return np.asarray(q, dtype=np.float32).reshape(C, H, W)


def crf_label_map(params: Dict[str, Any], probs: np.ndarray, rgb: np.ndarray,
                  lut: np.ndarray, ignore: int = 255) -> np.ndarray:
    """``lut`` of the CRF's argmax per pixel, ``ignore`` where not confident.

    Returns:
        np.ndarray: (H, W) int64.
    """
    q = crf_marginals(probs, rgb, params['iterations'], params['gaussian'], params['bilateral'],
                      params['reference_image'])
    idx = q.argmax(axis=0)
    label = np.asarray(lut, dtype=np.int64)[idx]
    if params['confidence_thr'] is not None:
        label[q.max(axis=0) < params['confidence_thr']] = ignore
    return label


class _CRFPool:
    """A lazily started process pool that restarts after a worker dies."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: Optional[ProcessPoolExecutor] = None
        self._lock = threading.Lock()  # threads of one process share the pool
        _POOLS.add(self)

    def __getstate__(self) -> dict:
        # A copied or pickled model gets its own pool, started on its first use.
        return dict(workers=self.workers)

    def __setstate__(self, state: dict) -> None:
        self.__init__(state['workers'])

    def submit(self, fn, *args) -> Future:
        with self._lock:
            for attempt in range(2):
                if self._executor is None:
                    method = ('fork' if 'fork' in multiprocessing.get_all_start_methods() else
                              'spawn')
                    self._executor = ProcessPoolExecutor(
                        self.workers, mp_context=multiprocessing.get_context(method))
                try:
                    return self._executor.submit(fn, *args)
                except BrokenProcessPool:
                    # A worker died since the last submit: start a fresh pool.
                    self._shutdown()
                    if attempt:
                        raise
        raise AssertionError('unreachable')

    def shutdown(self) -> None:
        """Stop the workers (waiting for the images they run); idempotent."""
        with self._lock:
            self._shutdown()

    def _shutdown(self, wait: bool = True) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=True)

    def __del__(self) -> None:
        # A model dropped without shutdown_crf_pools: let its workers exit.
        self._shutdown(wait=False)


_POOLS: 'weakref.WeakSet[_CRFPool]' = weakref.WeakSet()


def shutdown_crf_pools() -> None:
    """Stop every CRF worker pool of this process; also runs at exit."""
    for pool in list(_POOLS):
        pool.shutdown()


atexit.register(shutdown_crf_pools)
