"""LoadImageRobust / ResizeToPatchMultiple / image_io on real and broken files."""
import logging
import os
import os.path as osp
import pickle

import numpy as np
import pytest
from PIL import Image, ImageOps

from tagclip_mmseg.datasets import image_io, transforms
from tagclip_mmseg.datasets.image_io import ImageLoadError, load_rgb_image, read_image_size
from tagclip_mmseg.datasets.transforms import LoadImageRobust, ResizeToPatchMultiple
from tagclip_mmseg.utils.token_grid import patch_grid


def _save(path, img: Image.Image, **kwargs) -> str:
    img.save(path, **kwargs)
    return str(path)


def _random_rgb(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _load(path, **kwargs) -> dict:
    return LoadImageRobust(**kwargs)(dict(img_path=str(path)))


# --------------------------------------------------------------- real images
@pytest.mark.parametrize('name', ['skimage_camera.png', 'skimage_astronaut.png',
                                  'opencv_data_basketball1.png', 'mpl_grace_hopper.jpg',
                                  'skimage_coffee.png'])
def test_real_images_load_as_rgb_uint8(real_images_dir, name):
    path = osp.join(real_images_dir, 'images', name)
    with Image.open(path) as ref:
        expected = np.asarray(ref.convert('RGB'))
    results = _load(path)
    img = results['img']
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert results['ori_shape'] == results['img_shape'] == img.shape[:2]
    assert 'load_error' not in results
    np.testing.assert_array_equal(img, expected)


def test_grayscale_is_replicated_to_three_channels(real_images_dir):
    path = osp.join(real_images_dir, 'images', 'skimage_camera.png')
    with Image.open(path) as ref:
        assert ref.mode == 'L'
        gray = np.asarray(ref)
    img = load_rgb_image(path)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)


def test_resize_matches_reference_pil_bicubic(real_images_dir):
    """Bit-identical to TagCLIP: PIL RGB image resized with PIL bicubic."""
    path = osp.join(real_images_dir, 'images', 'mpl_grace_hopper.jpg')
    results = ResizeToPatchMultiple()(_load(path))
    with Image.open(path) as ref:
        ref = ref.convert('RGB')
        w, h = ref.size
        size = (-(-w // 16) * 16, -(-h // 16) * 16)
        expected = np.asarray(ref.resize(size, Image.BICUBIC))
    np.testing.assert_array_equal(results['img'], expected)
    assert results['img_shape'] == expected.shape[:2]
    assert results['ori_shape'] == (h, w)
    assert results['scale_factor'] == (size[0] / w, size[1] / h)


# ------------------------------------------------------------- image modes
def test_rgba_drops_alpha(tmp_path):
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[..., 0] = 200
    arr[..., 3] = 0  # fully transparent: colour underneath is kept
    path = _save(tmp_path / 'a.png', Image.fromarray(arr, 'RGBA'))
    img = load_rgb_image(path)
    assert img.shape == (8, 8, 3)
    assert (img[..., 0] == 200).all() and (img[..., 1:] == 0).all()


@pytest.mark.parametrize('mode', ['LA', 'P', '1', 'CMYK'])
def test_other_modes_convert_like_pil(tmp_path, mode):
    src = _random_rgb(12, 10).convert(mode)
    ext = '.jpg' if mode == 'CMYK' else '.png'
    path = _save(tmp_path / f'img{ext}', src)
    with Image.open(path) as ref:
        expected = np.asarray(ref.convert('RGB'))
    img = load_rgb_image(path)
    assert img.shape == (12, 10, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, expected)


def test_palette_png(tmp_path):
    pal = Image.new('P', (4, 3))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    pal.putpixel((1, 1), 1)
    pal.putpixel((2, 1), 2)
    img = load_rgb_image(_save(tmp_path / 'p.png', pal))
    assert img.shape == (3, 4, 3)
    assert tuple(img[1, 1]) == (255, 0, 0) and tuple(img[1, 2]) == (0, 255, 0)
    assert tuple(img[0, 0]) == (0, 0, 0)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = _save(tmp_path / 'deep.png', Image.fromarray(values))
    with Image.open(path) as check:
        assert check.mode.startswith('I')
    img = load_rgb_image(path)
    assert img.shape == (1, 4, 3)
    np.testing.assert_array_equal(img[0, :, 0], [0, 1, 128, 255])
    assert (img[..., 0] == img[..., 2]).all()


def test_float_image_is_min_max_normalised(tmp_path):
    values = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    img = load_rgb_image(_save(tmp_path / 'f.tif', Image.fromarray(values, 'F')))
    np.testing.assert_array_equal(img[0, :, 0], [0, 128, 255])


@pytest.mark.parametrize('ext', ['.webp', '.tif', '.bmp', '.gif'])
def test_common_formats(tmp_path, ext):
    img = load_rgb_image(_save(tmp_path / f'x{ext}', _random_rgb(9, 7)))
    assert img.shape == (9, 7, 3)


def test_exif_rotated_jpeg(tmp_path):
    src = Image.new('RGB', (40, 20), (0, 0, 255))
    src.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    path = _save(tmp_path / 'rot.jpg', src, exif=exif, quality=95)
    img = load_rgb_image(path)
    assert img.shape == (40, 20, 3)
    assert read_image_size(path) == (40, 20)
    with Image.open(path) as ref:
        expected = np.asarray(ImageOps.exif_transpose(ref).convert('RGB'))
    np.testing.assert_array_equal(img, expected)
    # Benchmark parity: annotations refer to the stored pixels.
    assert load_rgb_image(path, exif_transpose=False).shape == (20, 40, 3)
    assert read_image_size(path, exif_transpose=False) == (20, 40)
    results = _load(path, exif_transpose=False)
    assert results['ori_shape'] == (20, 40)


def test_large_image_limit_is_explicit(tmp_path, monkeypatch):
    path = _save(tmp_path / 'big.png', _random_rgb(64, 64))
    # PIL's own bomb check would reject this; ours is the max_pixels argument.
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)
    assert load_rgb_image(path).shape == (64, 64, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # global restored after the open
    with pytest.raises(ImageLoadError, match='max_pixels'):
        load_rgb_image(path, max_pixels=1000)
    assert _load(path, max_pixels=1000)['load_error'].startswith('image is 64x64')


# ---------------------------------------------------------------- bad files
def _bad_files(tmp_path):
    good = tmp_path / 'good.jpg'
    _random_rgb(64, 64).save(good, quality=90)
    data = good.read_bytes()
    files = {
        'zero bytes': (tmp_path / 'empty.jpg', b'', 'empty file'),
        'truncated': (tmp_path / 'trunc.jpg', data[:len(data) // 2], 'truncated or corrupt'),
        'text': (tmp_path / 'text.jpg', b'<html>not an image</html>\n', 'not a recognised'),
        'unsupported': (tmp_path / 'vector.svg', b'<svg xmlns="http://www.w3.org/2000/svg"/>',
                        'not a recognised'),
    }
    for path, content, _ in files.values():
        path.write_bytes(content)
    (tmp_path / 'a_dir.jpg').mkdir()
    files['directory'] = (tmp_path / 'a_dir.jpg', None, 'is a directory')
    files['missing'] = (tmp_path / 'nope.jpg', None, 'file not found')
    return files


@pytest.mark.parametrize('kind', ['zero bytes', 'truncated', 'text', 'unsupported', 'directory',
                                  'missing'])
def test_bad_files_raise_with_path_and_reason(tmp_path, kind):
    path, _, reason = _bad_files(tmp_path)[kind]
    with pytest.raises(ImageLoadError, match=reason) as info:
        _load(path, on_error='raise')
    assert str(path) in str(info.value)
    assert isinstance(info.value, OSError)


@pytest.mark.parametrize('kind', ['zero bytes', 'truncated', 'text', 'unsupported', 'directory',
                                  'missing'])
def test_bad_files_skip_with_placeholder(tmp_path, kind, monkeypatch):
    records = _record_logs(monkeypatch)
    path, _, reason = _bad_files(tmp_path)[kind]
    results = _load(path, on_error='skip', patch_size=14, keep_ori_img=True)
    assert reason in results['load_error']
    assert records[0][0] == logging.WARNING and str(path) in records[0][1]
    assert results['img'].shape == (14, 14, 3) and not results['img'].any()
    assert results['img_shape'] == results['ori_shape'] == (14, 14)
    assert results['ori_img'] is results['img']
    # The placeholder passes through the resize untouched.
    resized = ResizeToPatchMultiple(patch_size=14)(results)
    assert resized['img'].shape == (14, 14, 3)


def test_unreadable_file_is_reported(tmp_path, monkeypatch):
    path = _save(tmp_path / 'locked.png', _random_rgb(4, 4))
    if os.geteuid() != 0:
        os.chmod(path, 0)
    else:  # root reads everything: simulate the missing read permission
        real_access = os.access
        monkeypatch.setattr(image_io.os, 'access',
                            lambda p, mode: False if p == path else real_access(p, mode))
    try:
        with pytest.raises(ImageLoadError, match='permission denied'):
            load_rgb_image(path)
        assert 'permission denied' in _load(path)['load_error']
    finally:
        os.chmod(path, 0o644)


def test_error_survives_pickling():
    err = pickle.loads(pickle.dumps(ImageLoadError('/x.jpg', 'empty file (0 bytes)')))
    assert err.path == '/x.jpg' and err.reason == 'empty file (0 bytes)'
    assert '/x.jpg' in str(err)


def test_invalid_arguments():
    with pytest.raises(ValueError, match='on_error'):
        LoadImageRobust(on_error='ignore')
    with pytest.raises(ValueError, match='patch_size'):
        ResizeToPatchMultiple(patch_size=0)
    with pytest.raises(ValueError, match='max_tokens'):
        ResizeToPatchMultiple(max_tokens=0)
    with pytest.raises(ValueError, match='interpolation'):
        ResizeToPatchMultiple(interpolation='area')


# ------------------------------------------------------------------ resize
@pytest.mark.parametrize('hw, expected', [((1, 1), (16, 16)), ((8, 8), (16, 16)),
                                          ((16, 16), (16, 16)), ((17, 33), (32, 48)),
                                          ((3000, 20), (3008, 32)), ((20, 3000), (32, 3008))])
def test_resize_rounds_up_to_patch_multiple(tmp_path, hw, expected):
    path = _save(tmp_path / 'x.png', _random_rgb(*hw))
    results = ResizeToPatchMultiple(patch_size=16)(_load(path))
    assert results['img'].shape == expected + (3, )
    assert results['img_shape'] == expected
    assert results['ori_shape'] == hw


def test_resize_keeps_images_already_at_a_multiple():
    img = np.arange(32 * 48 * 3, dtype=np.uint8).reshape(32, 48, 3)
    out = ResizeToPatchMultiple()(dict(img=img))
    assert out['img'] is img and out['scale_factor'] == (1.0, 1.0)


def test_resize_rejects_non_uint8():
    with pytest.raises(TypeError, match='uint8'):
        ResizeToPatchMultiple()(dict(img=np.zeros((4, 4, 3), np.float32), img_path='f.png'))


def _record_logs(monkeypatch):
    records = []
    monkeypatch.setattr(transforms, 'print_log',
                        lambda msg, logger=None, level=logging.INFO: records.append((level, msg)))
    return records


def test_max_tokens_scales_down_with_warning(monkeypatch):
    records = _record_logs(monkeypatch)
    img = np.zeros((480, 640, 3), np.uint8)
    out = ResizeToPatchMultiple(max_tokens=100)(dict(img=img, img_path='big.jpg'))
    assert len(records) == 1 and records[0][0] == logging.WARNING
    assert 'big.jpg' in records[0][1] and 'max_tokens=100' in records[0][1]
    ResizeToPatchMultiple(max_tokens=1200)(dict(img=img, img_path='big.jpg'))  # 30x40 fits
    assert len(records) == 1  # within budget: silent
    rows, cols = out['img'].shape[0] // 16, out['img'].shape[1] // 16
    assert rows * cols <= 100 and (rows, cols) == (8, 11)
    assert out['img'].shape[:2] == (rows * 16, cols * 16)


@pytest.mark.parametrize('h, w, p, max_tokens', [
    (480, 640, 16, 100), (3000, 20, 16, 10), (20, 3000, 16, 10), (5000, 5000, 14, 1),
    (224, 224, 16, 196), (1000, 999, 16, 7), (100000, 3, 16, 50), (33, 47, 8, 13)])
def test_patch_grid_respects_budget(h, w, p, max_tokens):
    rows, cols = patch_grid(h, w, p, max_tokens)
    assert rows >= 1 and cols >= 1 and rows * cols <= max_tokens
    unlimited = patch_grid(h, w, p)
    assert unlimited == (-(-h // p), -(-w // p))
    if unlimited[0] * unlimited[1] <= max_tokens:
        assert (rows, cols) == unlimited
    else:  # aspect ratio kept up to flooring / the one-patch minimum
        assert rows <= unlimited[0] and cols <= unlimited[1]


def test_patch_grid_thin_image_uses_whole_budget():
    assert patch_grid(3000, 20, 16, 10) == (10, 1)
    assert patch_grid(20, 3000, 16, 10) == (1, 10)
    with pytest.raises(ValueError, match='at least 1x1'):
        patch_grid(0, 5)


def test_broken_link_in_a_scanned_folder(tmp_path):
    """A folder scan (no list) hands a dangling link to the loader: same reason."""
    from tagclip_mmseg.datasets import LoadImageRobust, MultiLabelImageFolder
    os.symlink(tmp_path / 'moved_away.jpg', tmp_path / 'dangling.jpg')
    dataset = MultiLabelImageFolder(data_prefix=dict(img_path=str(tmp_path)),
                                    metainfo=dict(classes=('cat', )), lazy_init=False)
    results = LoadImageRobust()(dict(img_path=dataset.get_data_info(0)['img_path']))
    assert results['load_error'] == 'file not found (broken symbolic link)'
