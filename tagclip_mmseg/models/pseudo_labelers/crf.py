"""Dense CRF post-processing of CAM probabilities (docs/method.md §6.5).

Optional: needs the ``crf`` extra (``pip install -e .[crf]``, which installs
``pydensecrf2``, a maintained build of Krähenbühl's dense CRF bindings that
compiles with Cython 3). The CRF runs on the CPU, one image at a time, as in
the reference; it is the one stage here that is not batched on the device.

It is also the slow stage of pseudo-label generation (about a second per
VOC-size image on one core), so with ``workers > 0`` it leaves the model's
forward: each image's CRF is submitted to a pool of worker processes, the
sample gets a :class:`PendingLabel`, and the metrics that read
``pred_sem_seg`` (:class:`~tagclip_mmseg.evaluation.PseudoLabelWriter`,
:class:`~tagclip_mmseg.evaluation.CLSSegIoUMetric`) collect the results in
order while the next batch's CAMs are computed. The workers run the same
function on the same arrays as the serial path, so the masks are identical.
"""
import atexit
import multiprocessing
import weakref
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import Tensor, nn

from mmseg.registry import MODELS

from ...utils.init_args import RecordsInitArgs
from ...utils.quirks import Quirks, QuirksLike, resolve_legacy_quirks

__all__ = ['DenseCRF', 'PendingLabel', 'crf_reference_image', 'crf_label_map',
           'shutdown_crf_pools', 'PENDING_LABEL_KEY']

#: Data-sample field holding the :class:`PendingLabel` of a deferred CRF.
PENDING_LABEL_KEY = 'pred_sem_seg_pending'

#: deeplab-pytorch's BGR mean, subtracted from the CRF image with
#: ``quirks.crf_reference_image``.
CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)


def crf_reference_image(rgb: np.ndarray) -> np.ndarray:
    """The image the reference gives the bilateral term (quirk 4).

    It is the BGR image minus the Caffe mean, cast to uint8, so negative values
    wrap around modulo 256. Reproduced exactly for the published numbers.
    """
    bgr = rgb[..., ::-1].astype(np.float32) - np.asarray(CAFFE_BGR_MEAN, np.float32)
    return np.ascontiguousarray(bgr.astype(np.int64).astype(np.uint8))


@MODELS.register_module()
class DenseCRF(RecordsInitArgs, nn.Module):
    """Fully connected CRF over per-class probability maps.

    Args:
        iterations (int): Mean-field iterations (10).
        gaussian_sxy (float): Smoothness kernel width (1).
        gaussian_compat (float): Smoothness weight (3).
        bilateral_sxy (float): Appearance kernel spatial width (67).
        bilateral_srgb (float): Appearance kernel colour width (3).
        bilateral_compat (float): Appearance weight (4).
        confidence_thr (float, optional): Pixels whose largest marginal is below
            this become ignore (-1 here, 255 in the saved mask); CLIP-ES uses
            0.95 for training masks, ``None`` keeps every pixel.
        quirks (str | dict | Quirks): The CRF reads ``crf_reference_image``:
            ``True`` (``'reference'``) feeds the reference's wrapped
            mean-subtracted BGR image, ``False`` (``'fixed'``) the raw RGB
            image (docs/modes.md). A labeler passes its own quirks unless its
            ``crf`` dict sets them.
        image_mode (str, optional): Deprecated: ``'faithful'`` is
            ``quirks=dict(crf_reference_image=True)``, ``'clean'`` ``False``.
        workers (int): 0 runs the CRF in the model's forward, image after
            image. ``N > 0`` runs it in a pool of ``N`` worker processes
            (started on first use, stopped by :func:`shutdown_crf_pools`,
            which the metrics call at the end of the run): the forward
            returns at once and ``pred_sem_seg`` is filled when the metrics
            collect the result. About one worker per free CPU core.
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
                 workers: int = 0,
                 image_mode: Optional[str] = None) -> None:
        super().__init__()
        #: Resolved quirk switches; only ``crf_reference_image`` matters here.
        self.quirks: Quirks = resolve_legacy_quirks(quirks, type(self).__name__, 'image_mode',
                                                    image_mode, field='crf_reference_image')
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f'workers must be an integer >= 0 (0 runs the CRF in the '
                             f'forward), got {workers!r}')
        self.iterations = iterations
        self.gaussian = dict(sxy=gaussian_sxy, compat=gaussian_compat)
        self.bilateral = dict(sxy=bilateral_sxy, srgb=bilateral_srgb, compat=bilateral_compat)
        self.confidence_thr = confidence_thr
        self.workers = workers
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
            data_sample: Carries ``ori_img`` (RGB uint8, original size) in its
                metainfo; the dataset adds it when the config enables CRF.
        """
        lut = np.arange(probs.shape[0], dtype=np.int64)
        idx = crf_label_map(self.params, *_crf_inputs(probs, data_sample), lut, ignore=-1)
        return torch.from_numpy(idx).to(probs.device)

    def label(self, probs: Tensor, lut: Tensor, data_sample) -> Tensor:
        """The (H, W) label map ``lut[crf index]`` (255 where not confident).

        With ``workers == 0`` the CRF runs now. Otherwise it is submitted to
        the pool: ``data_sample`` gets a :class:`PendingLabel` (field
        :data:`PENDING_LABEL_KEY`) and the returned placeholder is all 255
        ("ignore"), so a consumer that does not collect the result sees an
        obviously empty mask, never a plausible wrong one.

        Args:
            probs (Tensor): (C, H, W) stacked [background, CAM_1..CAM_K].
            lut (Tensor): (C,) saved label of each channel.
            data_sample: Carries ``ori_img`` in its metainfo.
        """
        probs_np, rgb = _crf_inputs(probs, data_sample)
        lut_np = lut.detach().cpu().numpy().astype(np.int64)
        if self._pool is None:
            out = crf_label_map(self.params, probs_np, rgb, lut_np)
            return torch.from_numpy(out).to(probs.device)
        future = self._pool.submit(crf_label_map, self.params, probs_np, rgb, lut_np)
        data_sample.set_field(PendingLabel(future), PENDING_LABEL_KEY)
        return torch.full(probs.shape[-2:], 255, dtype=torch.long, device=probs.device)


class PendingLabel:
    """A label map that a CRF worker is computing.

    It lives in the process that submitted it, on the data sample, from the
    model's forward until a metric collects it (:meth:`result`).
    """

    def __init__(self, future: Future) -> None:
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> Tensor:
        """The (H, W) long label map; waits for the worker.

        Raises:
            RuntimeError: The CRF failed in its worker, or the worker died
                (killed, out of memory); the message says which.
        """
        try:
            return torch.from_numpy(self.future.result())
        except BrokenProcessPool as e:
            raise RuntimeError(f'the CRF worker process died before finishing this image '
                               f'({e}); the pool is restarted for the next images') from e
        except Exception as e:  # noqa: BLE001  (anything raised inside the worker)
            raise RuntimeError(f'the CRF failed in its worker: {type(e).__name__}: {e}') from e


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
    """Mean-field marginals (C, H, W) for probabilities and an RGB image.

    ``reference_image`` gives the bilateral term :func:`crf_reference_image`
    (``Quirks.crf_reference_image``) instead of the RGB image itself.
    """
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
    """``lut`` of the CRF's argmax per pixel, ``ignore`` where the largest
    marginal is below ``params['confidence_thr']``.

    The one implementation of CRF labelling, run in process or in a worker
    (a module-level function of numpy arrays, so it pickles).

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
    """A lazily started process pool that restarts after a worker dies.

    Workers are forked where the platform can: a spawned worker would import
    torch, mmseg and this package again (tens of seconds on a busy machine)
    to run a function of numpy arrays. A forked child must not use torch
    (its thread pools and any CUDA context do not survive a fork), and
    :func:`crf_label_map` never does; Python 3.11's pool forks all workers
    at the first submit, before its own manager thread starts. Every live
    pool is known to :func:`shutdown_crf_pools`, and to interpreter exit.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: Optional[ProcessPoolExecutor] = None
        _POOLS.add(self)

    def __getstate__(self) -> dict:
        # A copied or pickled model gets its own pool, started on its first use.
        return dict(workers=self.workers)

    def __setstate__(self, state: dict) -> None:
        self.__init__(state['workers'])

    def submit(self, fn, *args) -> Future:
        for attempt in range(2):
            if self._executor is None:
                method = 'fork' if 'fork' in multiprocessing.get_all_start_methods() else 'spawn'
                self._executor = ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context(method))
            try:
                return self._executor.submit(fn, *args)
            except BrokenProcessPool:
                # A worker died since the last submit: its images fail (their
                # PendingLabel says so); later images get a fresh pool.
                self.shutdown()
                if attempt:
                    raise
        raise AssertionError('unreachable')

    def shutdown(self) -> None:
        """Stop the workers (waiting for the images they run); idempotent."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


_POOLS: 'weakref.WeakSet[_CRFPool]' = weakref.WeakSet()


def shutdown_crf_pools() -> None:
    """Stop every CRF worker pool of this process (they restart on next use).

    The metrics call it once they have collected every pending label (the end
    of the run), and it runs at interpreter exit, so no worker outlives the run.
    """
    for pool in list(_POOLS):
        pool.shutdown()


atexit.register(shutdown_crf_pools)
