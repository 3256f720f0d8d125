"""Dense CRF post-processing (optional extra: pydensecrf2)."""
from functools import partial

import numpy as np
import pytest
import torch
from mmseg.structures import SegDataSample
from PIL import Image

pytest.importorskip('pydensecrf')

from tagclip_mmseg.models.pseudo_labelers import (DenseCRF, crf_reference_image,  # noqa: E402
                                                  shutdown_crf_pools)
from tagclip_mmseg.testing.models import build_labeler  # noqa: E402

#: A two-class labeler on the tiny CLIP's three layers: ``cat_dog_labeler(checkpoint, ...)``.
cat_dog_labeler = partial(build_labeler, class_names=['cat', 'dog'], background_words=['sky'],
                          caa_layers=(0, 1, 2))


def test_reference_image_wraps_like_uint8_cast():
    rgb = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    out = crf_reference_image(rgb)
    # BGR minus (104.008, 116.669, 122.675), truncated, modulo 256
    assert out[0, 0].tolist() == [(-104) % 256, (-116) % 256, (-122) % 256]
    assert out[0, 1].tolist() == [150, 138, 132]


def test_reference_image_of_a_coloured_pixel_is_bgr_minus_mean():
    """R, G and B differ, so an RGB/BGR swap changes every channel."""
    rgb = np.array([[[10, 120, 250], [200, 100, 0]]], np.uint8)
    out = crf_reference_image(rgb)
    # B - 104.008, G - 116.669, R - 122.675, truncated toward 0, modulo 256:
    # 145.992 -> 145, 3.331 -> 3, -112.675 -> -112 -> 144
    assert out[0, 0].tolist() == [145, 3, 144]
    # -104.008 -> -104 -> 152, -16.669 -> -16 -> 240, 77.325 -> 77
    assert out[0, 1].tolist() == [152, 240, 77]


def colour_case():
    """Four colour regions, image noise and noisy probabilities for three classes.

    R, G and B differ within each pixel.
    """
    h, w = 20, 28
    rng = np.random.default_rng(3)
    rgb = np.zeros((h, w, 3), np.int64)
    rgb[:10, :14] = (220, 40, 90)
    rgb[:10, 14:] = (30, 200, 120)
    rgb[10:, :14] = (60, 90, 230)
    rgb[10:, 14:] = (250, 210, 20)
    rgb = np.clip(rgb + rng.integers(-12, 13, rgb.shape), 0, 255).astype(np.uint8)
    probs = rng.uniform(0.05, 0.6, (3, h, w)).astype(np.float32)
    probs[0, :10] += 0.25
    probs[1, 10:, :14] += 0.25
    probs[2, 10:, 14:] += 0.25
    return probs, rgb


def direct_crf(probs: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Pydensecrf called as CLIP-ES does, with the paper's parameters.

    See docs/method.md, "Dense CRF (optional)": 10 iterations, Gaussian sxy 1 compat 3,
    bilateral sxy 67 srgb 3 compat 4, unary -log(clip(p, 1e-5, 1)).
    """
    import pydensecrf.densecrf as dcrf
    c, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-5, 1.0)).reshape(c, -1)))
    d.addPairwiseGaussian(sxy=1, compat=3)
    d.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(image), compat=4)
    return np.asarray(d.inference(10), np.float32).reshape(c, h, w)


@pytest.mark.classic
@pytest.mark.parametrize('quirks', ['reference', 'fixed'])
def test_crf_equals_a_direct_pydensecrf_call_on_a_colour_image(quirks):
    probs, rgb = colour_case()
    if quirks == 'reference':
        # the reference's image: BGR minus the Caffe mean, wrapped into uint8
        bgr = rgb[..., ::-1].astype(np.float64) - np.array([104.008, 116.669, 122.675])
        image = np.trunc(bgr).astype(np.int64) % 256
    else:
        image = rgb
    expected = direct_crf(probs, image.astype(np.uint8))
    crf = DenseCRF(quirks=quirks)  # the defaults are the paper's parameters
    got = crf.marginals(probs, rgb)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    idx = crf(torch.from_numpy(probs), SegDataSample(metainfo=dict(ori_img=rgb)))
    assert torch.equal(idx, torch.from_numpy(expected.argmax(0)))
    if quirks == 'reference':
        # the case tells the channel orders apart: RGB minus the same mean
        # (wrapping elsewhere) gives other marginals. (With the RGB image a channel
        # swap only permutes the bilateral features, which no result shows.)
        rgb_wrapped = np.trunc(rgb - np.array([104.008, 116.669, 122.675])).astype(np.int64) % 256
        swapped = direct_crf(probs, rgb_wrapped.astype(np.uint8))
        assert np.abs(swapped - expected).max() > 1e-2


def two_region_case():
    """Left half red, right half blue.

    Probabilities slightly favour the truth but are noisy.
    """
    h, w = 24, 32
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, :16] = (200, 30, 30)
    rgb[:, 16:] = (30, 30, 200)
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(2, h, w, generator=gen) * 0.5
    probs[0, :, :16] += 0.3
    probs[1, :, 16:] += 0.3
    return probs, rgb


@pytest.mark.parametrize('quirks', ['reference', 'fixed'])
def test_crf_cleans_noisy_labels(quirks):
    probs, rgb = two_region_case()
    crf = DenseCRF(quirks=quirks)
    sample = SegDataSample(metainfo=dict(ori_img=rgb))
    idx = crf(probs, sample)
    truth = torch.zeros(24, 32, dtype=torch.long)
    truth[:, 16:] = 1
    noisy_acc = (probs.argmax(0) == truth).float().mean()
    assert (idx == truth).float().mean() >= noisy_acc
    assert idx.shape == (24, 32)


def test_confidence_ignore_and_errors():
    probs, rgb = two_region_case()
    sample = SegDataSample(metainfo=dict(ori_img=rgb))
    strict = DenseCRF(confidence_thr=1.0)(probs, sample)
    assert (strict == -1).all()  # no marginal reaches 1 exactly: all ignored
    with pytest.raises(KeyError, match='ori_img'):
        DenseCRF()(probs, SegDataSample())
    with pytest.raises(ValueError, match='quirks'):
        DenseCRF(quirks='bgr')
    with pytest.raises(TypeError, match='image_mode'):
        DenseCRF(image_mode='bgr')


@pytest.mark.classic
def test_labeler_with_crf_marks_ignore(tiny_clip_path, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    image = torch.randn(3, 32, 48, generator=torch.Generator().manual_seed(0))
    out = {}
    for thr in (None, 1.0):
        model = cat_dog_labeler(tiny_clip_path, text_cache_dir=str(tmp_path),
                                crf=dict(confidence_thr=thr))
        s = SegDataSample(metainfo=dict(tags=[0, 1], ori_shape=(30, 40), ori_img=rgb))
        out[thr] = model.predict([image], [s])[0].pred_sem_seg.data
    assert out[1.0].shape == (1, 30, 40)
    assert set(out[None].unique().tolist()) <= {0, 1, 2}
    # Pixels whose largest marginal is below 1 become 255; the others keep their label.
    assert (out[1.0] == 255).any()
    assert ((out[1.0] == out[None]) | (out[1.0] == 255)).all()


# ------------------------------------------------- CRF in worker processes
def _labeler(tiny_clip_path, tmp_path, workers):
    # Non-default CRF parameters, so that a worker using the defaults would differ.
    crf = dict(iterations=4, bilateral_sxy=30., bilateral_srgb=7., confidence_thr=0.6,
               workers=workers)
    return cat_dog_labeler(tiny_clip_path, work_dir=tmp_path, crf=crf)


def _photo_samples(count, seed=0):
    """Blocky colour images (so the bilateral term matters) and their samples."""
    rng = np.random.default_rng(seed)
    samples, images = [], []
    for i in range(count):
        rgb = np.kron(rng.integers(0, 255, (5, 5, 3)), np.ones((6, 8, 1))).astype(np.uint8)
        samples.append(SegDataSample(metainfo=dict(
            tags=[0, 1] if i % 2 else [1], ori_shape=(30, 40), ori_img=rgb, img_id=f'im{i}',
            img_path=f'/d/im{i}.jpg')))
        img = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 50 - 2.5
        images.append(torch.nn.functional.interpolate(img, size=(32, 48), mode='bilinear')[0])
    return images, samples


def _write_through(out_dir, samples):
    from tagclip_mmseg.evaluation import PseudoLabelWriter
    writer = PseudoLabelWriter(out_dir=str(out_dir))
    writer.process({}, [s.to_dict() for s in samples])
    return writer.evaluate(len(samples))


def _worker_pids():
    """Pids of this process's children (the CRF workers), zombies included.

    Less multiprocessing's resource tracker (Linux /proc).
    """
    import os
    me, pids = os.getpid(), []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
            with open(f'/proc/{entry}/cmdline', 'rb') as f:
                cmdline = f.read()
        except OSError:
            continue
        if int(fields[1]) == me and b'resource_tracker' not in cmdline:
            pids.append(int(entry))
    return pids


@pytest.mark.classic
def test_crf_workers_write_the_same_pngs_as_serial(tiny_clip_path, tmp_path):
    """Predict returns final masks with workers.

    Equal to the in-process CRF's, with no pending field left on the samples.
    """
    from tagclip_mmseg.models.pseudo_labelers.crf import PENDING_LABEL_KEY
    images, _ = _photo_samples(4)
    outputs, masks = {}, {}
    for workers in (0, 2):
        model = _labeler(tiny_clip_path, tmp_path, workers)
        _, samples = _photo_samples(4)
        model.predict(images, samples)
        assert [s.get(PENDING_LABEL_KEY) for s in samples] == [None] * 4
        masks[workers] = torch.stack([s.pred_sem_seg.data for s in samples])
        counts = _write_through(tmp_path / f'w{workers}', samples)
        assert counts == {'pseudo_label/written': 4, 'pseudo_label/skipped': 0,
                          'pseudo_label/failed': 0}
        outputs[workers] = {i: (tmp_path / f'w{workers}' / f'im{i}.png').read_bytes()
                            for i in range(4)}
    assert torch.equal(masks[2], masks[0])
    assert outputs[2] == outputs[0]  # byte-identical PNGs
    pngs = [np.asarray(Image.open(tmp_path / 'w0' / f'im{i}.png')) for i in range(4)]
    # The CRF really ran: confident pixels got class labels, others 255.
    assert any(((m > 0) & (m < 255)).any() for m in pngs)
    shutdown_crf_pools()
    assert _worker_pids() == []  # no zombies


def test_killed_crf_worker_reruns_its_images_in_a_fresh_pool(tiny_clip_path, tmp_path):
    import os
    import signal
    import threading
    import time
    serial = _labeler(tiny_clip_path, tmp_path, workers=0)
    images, expected = _photo_samples(3)
    serial.predict(images, expected)
    model = _labeler(tiny_clip_path, tmp_path, workers=1)
    # Keep the one worker busy, queue the three images behind it, kill it.
    blocker = model.crf._pool.submit(time.sleep, 60)

    def kill_the_worker():
        deadline = time.time() + 60
        while not (workers := _worker_pids()) and time.time() < deadline:
            time.sleep(0.1)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_worker)
    killer.start()
    _, samples = _photo_samples(3)
    model.predict(images, samples)  # waits: the images run again in a fresh pool
    killer.join()
    with pytest.raises(Exception):
        blocker.result(timeout=60)
    for got, want in zip(samples, expected):
        assert torch.equal(got.pred_sem_seg.data, want.pred_sem_seg.data)
    shutdown_crf_pools()
    assert _worker_pids() == []


def _die_in_worker(*args):
    import os
    os._exit(3)


def test_an_image_whose_worker_dies_twice_stops_predict(tiny_clip_path, tmp_path, monkeypatch):
    import tagclip_mmseg.models.pseudo_labelers.crf as crf_module
    model = _labeler(tiny_clip_path, tmp_path, workers=1)
    images, samples = _photo_samples(1)
    monkeypatch.setattr(crf_module, 'crf_label_map', _die_in_worker)
    try:
        with pytest.raises(RuntimeError, match='died twice.*lower model.crf.workers'):
            model.predict(images, samples)
    finally:
        shutdown_crf_pools()
    assert _worker_pids() == []


@pytest.mark.parametrize('workers', [0, 2])
def test_predict_returns_final_masks_to_mmseg_consumers(tiny_clip_path, tmp_path, workers):
    """TagCLIPSegmentor with a CRF.

    mmseg's IoUMetric and SegVisualizationHook see the same masks with workers as without (the old
    placeholder was all 255).
    """
    from mmengine.structures import PixelData
    from mmseg.engine.hooks import SegVisualizationHook
    from mmseg.evaluation import IoUMetric
    from mmseg.visualization import SegLocalVisualizer

    from tagclip_mmseg.models.segmentors import TagCLIPSegmentor
    vocab = dict(class_names=['cat', 'dog'], background_words=['sky'],
                 templates=['a photo of a {}.'])
    crf = dict(iterations=4, bilateral_sxy=30., bilateral_srgb=7., confidence_thr=0.6)
    models = []  # alive until their pools are stopped below

    def run(workers, name):
        model = TagCLIPSegmentor(
            clip=dict(checkpoint=str(tiny_clip_path)), text_cache_dir=str(tmp_path / 'cache'),
            all_classes_as_tags=True, labeler=dict(vocab, caa_layers=[0, 1, 2]),
            crf=dict(crf, workers=workers)).eval()
        models.append(model)
        images, samples = _photo_samples(4)
        for i, s in enumerate(samples):
            gt = torch.zeros(1, 30, 40, dtype=torch.long)
            gt[:, :, 20:] = 1 + i % 2
            s.gt_sem_seg = PixelData(data=gt)
        out = model.predict(images, samples)
        metric = IoUMetric()
        metric.dataset_meta = dict(classes=('background', 'cat', 'dog'))
        metric.process({}, [s.to_dict() for s in out])
        visualizer = SegLocalVisualizer.get_instance(
            f'vis_{tmp_path.name}_{name}', vis_backends=[dict(type='LocalVisBackend')],
            save_dir=str(tmp_path / name))
        visualizer.dataset_meta = dict(classes=('background', 'cat', 'dog'),
                                       palette=[[0, 0, 0], [128, 0, 0], [0, 128, 0]])
        hook = SegVisualizationHook(draw=True, interval=1)
        hook._visualizer = visualizer

        class Runner:
            iter = 0
        for i, s in enumerate(out):
            s.set_metainfo(dict(img_path=str(tmp_path / f'im{i}.png')))
            Image.fromarray(s.metainfo['ori_img']).save(s.img_path)
        hook.after_test_iter(Runner(), 0, {}, out)
        pictures = sorted((tmp_path / name).rglob('*.png'))
        return (torch.stack([s.pred_sem_seg.data for s in out]), metric.evaluate(4),
                [p.read_bytes() for p in pictures])

    ref_masks, ref_metrics, ref_pictures = run(0, 'serial')
    masks, metrics, pictures = run(workers, f'w{workers}')
    assert (ref_masks != 255).any() and (ref_masks < 3).any()
    assert torch.equal(masks, ref_masks)
    assert metrics == ref_metrics and metrics['mIoU'] > 0
    assert len(pictures) == 4 and pictures == ref_pictures
    shutdown_crf_pools()
    assert _worker_pids() == []


def test_workers_option_is_validated():
    with pytest.raises(ValueError, match=r'crf.workers must be an integer in \[0, inf\)'):
        DenseCRF(workers=-1)


# ------------------------------------------- exact ties, computed by hand
def _record_marginals(monkeypatch, marginals=None):
    """Replace the mean-field step.

    Record the probabilities the CRF is given and return ``marginals`` (default: those probabilities
    unchanged).
    """
    from tagclip_mmseg.models.pseudo_labelers import crf as crf_module
    received = []

    def fake(probs, rgb, *args):
        received.append(probs.copy())
        return probs if marginals is None else marginals

    monkeypatch.setattr(crf_module, 'crf_marginals', fake)
    return received


def test_one_tag_crf_receives_background_then_cam(tiny_clip_path, tmp_path, monkeypatch):
    """With one tag the CRF gets ``[1 - cam, cam]`` (background first).

    The labels are ``[0, tag + 1]``, and ``probs[0] == 1 - probs[1]`` exactly.
    """
    received = _record_marginals(monkeypatch)
    model = cat_dog_labeler(tiny_clip_path, text_cache_dir=str(tmp_path),
                            crf=dict(confidence_thr=0.7))
    sample = SegDataSample(metainfo=dict(ori_img=np.zeros((2, 2, 3), np.uint8)))
    cam = torch.tensor([[[0., .25], [.75, 1.]]])
    label = model.cams_to_label(cam, [1], sample)
    assert len(received) == 1
    assert received[0].tolist() == [[[1., .75], [.25, 0.]], [[0., .25], [.75, 1.]]]
    # marginals = probs: per-pixel max 1, .75, .75, 1 >= 0.7, argmax bg, bg, dog, dog
    assert label.tolist() == [[0, 0], [2, 2]]

    # The same through the model's forward (Grad-CAM, upsampling), one tag;
    # seeded input whose CAM is not all zero.
    received.clear()
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    s = SegDataSample(metainfo=dict(tags=[0], ori_shape=(30, 40), ori_img=rgb))
    model.predict([torch.randn(3, 32, 48, generator=torch.Generator().manual_seed(3))], [s])
    (probs, ) = received
    assert probs.shape == (2, 30, 40)
    assert np.array_equal(probs[0], 1 - probs[1])
    assert probs[1].max() > probs[1].min() >= 0  # a real CAM, not a constant


def test_confidence_ignore_keeps_a_marginal_at_exactly_the_threshold(monkeypatch):
    """Ignore only where the largest marginal is strictly below ``confidence_thr``."""
    q = np.array([[[.75, .25, .625]], [[.25, .75, .375]]], np.float32)  # exact in binary
    _record_marginals(monkeypatch, q)
    crf = DenseCRF(confidence_thr=.75)
    probs = torch.from_numpy(q)
    sample = SegDataSample(metainfo=dict(ori_img=np.zeros((1, 3, 3), np.uint8)))
    assert crf(probs, sample).tolist() == [[0, 1, -1]]
    assert crf.label(probs, torch.tensor([0, 7]), sample).tolist() == [[0, 7, 255]]
