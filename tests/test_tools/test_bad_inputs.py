"""Bad input through the real tools: every broken file and odd pixel format at once.

One image list holds every kind of file a 100k-image cluster job meets: broken
ones (empty, truncated, HTML saved as .jpg, a TIFF variant PIL cannot decode,
a broken symbolic link, an unreadable file, a directory and a missing file
named by the list) and valid ones in every pixel layout (grayscale, RGBA,
palette, CMYK, 16-bit, EXIF-rotated, 1x1, smaller than a patch, 3000x20,
20x3000 and an 8000x6000 photo). The tagging tool and the pseudo-label tool
must tag / label every valid image, list every broken one with its reason in
the run summary and exit 0 (``on_error='skip'``), or stop at the first broken
one naming it (``on_error='raise'``).

Unit-level behaviour of each case (exact pixels, reasons, placeholders) is in
``tests/test_datasets/test_transforms.py``; here the cases go through the whole run.
"""
import io
import json
import os
import re
import struct

import numpy as np
import pytest
from PIL import Image

from tagclip_mmseg.datasets import image_io

TAG_CONFIG = 'configs/tagclip/tagclip_vit-b16_folder.py'
#: A budget that every image above ~1000x1000 pixels exceeds.
MAX_TOKENS = 64
#: Memory a tagging run of the list may add to the imported stack (peak RSS
#: minus RSS after imports). Measured: ~0.65 GB, of which the 8000x6000 photo
#: is ~0.45 GB (its 144 MB RGB array, PIL's copy and the resize's input).
#: Without the token cap its 187,500-token attention alone would need > 100 GB,
#: so the bound fails loudly if the cap stops working, with room for allocator
#: and library differences.
RUN_RSS_LIMIT_MB = 1024
#: The same for the pseudo-label tool on the 8000x6000 photo alone with two
#: tags. Its mask is written at full size (48 MB as uint8); float32 CAMs at
#: full size are 192 MB per tag, so a run within ~1.5 GB is reasonable.
PL_HUGE_RSS_LIMIT_MB = 1536


# ------------------------------------------------------------------- files
def _random(h, w, seed, channels=3):
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels > 1 else (h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format='JPEG', quality=90, **kwargs)
    return buf.getvalue()


def _tiff_with_unknown_compression() -> bytes:
    """A valid little-endian TIFF whose compression tag says JPEG 2000 (34712).

    Real scanners write such files; PIL has no decoder for them.
    """
    buf = io.BytesIO()
    Image.fromarray(_random(20, 20, 7)).save(buf, format='TIFF')
    data = bytearray(buf.getvalue())
    ifd = struct.unpack('<I', data[4:8])[0]
    for i in range(struct.unpack('<H', data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack('<H', data[entry:entry + 2])[0] == 259:  # Compression
            data[entry + 8:entry + 10] = struct.pack('<H', 34712)
            return bytes(data)
    raise AssertionError('PIL wrote a TIFF without a compression tag')


def _save_good_images(img_dir) -> dict:
    """Valid images of every pixel kind, each as ``<id>.jpg`` whatever its format.

    Returns:
        dict: id -> stored (H, W) (before any EXIF rotation).
    """
    kinds = {}

    def save(img_id, img, fmt, **kwargs):
        img.save(img_dir / f'{img_id}.jpg', format=fmt, **kwargs)
        kinds[img_id] = img.size[::-1]

    save('rgb', Image.fromarray(_random(40, 56, 0)), 'JPEG', quality=90)
    save('gray', Image.fromarray(_random(36, 44, 1, channels=1)), 'PNG')
    save('rgba', Image.fromarray(_random(30, 50, 2, channels=4), 'RGBA'), 'PNG')
    palette = Image.fromarray(_random(33, 47, 3)).convert('P', palette=Image.Palette.ADAPTIVE)
    palette.info['transparency'] = 0
    save('palette', palette, 'PNG')
    save('cmyk', Image.fromarray(_random(32, 48, 4, channels=4), 'CMYK'), 'JPEG', quality=90)
    deep = (np.arange(28 * 52, dtype=np.uint16).reshape(28, 52) * 40)
    save('png16', Image.fromarray(deep), 'PNG')  # mode I;16
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; viewers rotate it by 90 degrees
    save('exif_rotated', Image.fromarray(_random(24, 40, 5)), 'JPEG', exif=exif, quality=90)
    save('one_pixel', Image.new('RGB', (1, 1), (200, 30, 30)), 'PNG')
    save('smaller_than_patch', Image.fromarray(_random(8, 8, 6)), 'PNG')
    save('wide', Image.new('RGB', (3000, 20), (20, 120, 200)), 'PNG')
    save('tall', Image.new('RGB', (20, 3000), (200, 120, 20)), 'PNG')
    # A flat colour compresses to a few hundred KB but decodes to 144 MB.
    save('huge', Image.new('RGB', (8000, 6000), (90, 160, 60)), 'JPEG', quality=75)
    return kinds


def _save_bad_files(img_dir) -> dict:
    """Broken entries of an image list.

    Returns:
        dict: id -> the reason (a substring) the run summary must give.
    """
    good = _jpeg_bytes(Image.fromarray(_random(64, 64, 8)))
    (img_dir / 'empty.jpg').write_bytes(b'')
    (img_dir / 'truncated.jpg').write_bytes(good[:len(good) // 2])
    (img_dir / 'html.jpg').write_text('<html><body>404 Not Found</body></html>\n')
    (img_dir / 'unsupported.jpg').write_bytes(_tiff_with_unknown_compression())
    os.symlink(img_dir / 'moved_away.jpg', img_dir / 'dangling.jpg')
    (img_dir / 'locked.jpg').write_bytes(good)
    os.chmod(img_dir / 'locked.jpg', 0)
    (img_dir / 'folder.jpg').mkdir()
    bad = {
        'empty': 'empty file (0 bytes)',
        'truncated': 'truncated or corrupt image data',
        'html': 'not a recognised image format',
        'unsupported': 'not a recognised image format',
        'dangling': 'file not found (broken symbolic link)',
        'locked': 'permission denied',
        'folder': 'is a directory',
        'ghost': 'file not found',  # listed, never existed
    }
    return bad


@pytest.fixture(scope='module')
def bad_input(tmp_path_factory):
    """An image list (``list.txt``) and tags file over every kind of input.

    Returns:
        dict: ``root`` (with ``JPEGImages/``, ``list.txt``, ``tags.txt``),
        ``good`` (id -> stored (H, W)) and ``bad`` (id -> reason).
    """
    root = tmp_path_factory.mktemp('bad_input')
    img_dir = root / 'JPEGImages'
    img_dir.mkdir()
    good = _save_good_images(img_dir)
    bad = _save_bad_files(img_dir)
    ids = sorted(good) + sorted(bad)  # bad ones last: a raise run gets some work done
    (root / 'list.txt').write_text(''.join(i + '\n' for i in ids))
    # The pseudo-label tool spends ~10 s on the 8000x6000 photo (masks are full
    # size); the fast runs leave it out and test_pseudo_labels_of_a_huge_image has it.
    (root / 'list_no_huge.txt').write_text(''.join(i + '\n' for i in ids if i != 'huge'))
    (root / 'list_huge.txt').write_text('huge\n')
    (root / 'tags.txt').write_text(''.join(f'{i} 7 14\n' for i in ids))  # cat, person
    yield dict(root=root, good=good, bad=bad)
    os.chmod(img_dir / 'locked.jpg', 0o644)  # let pytest clean up


@pytest.fixture
def unreadable(bad_input, monkeypatch):
    """Make ``locked.jpg`` unreadable for an in-process run, also as root.

    root reads a file whatever its mode; the loader's permission check is
    then simulated exactly as ``tests/test_datasets/test_transforms.py`` does.
    """
    locked = str(bad_input['root'] / 'JPEGImages' / 'locked.jpg')
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr(image_io.os, 'access',
                            lambda p, mode: False if str(p) == locked else real_access(p, mode))


def _read_summary_lines(path) -> dict:
    """``img_id<TAB>img_path<TAB>reason`` lines -> {id: (path, reason)}."""
    rows = [line.split('\t') for line in path.read_text().splitlines()]
    assert all(len(r) == 3 for r in rows), rows
    return {r[0]: (r[1], r[2]) for r in rows}


def _expected(bad_input, unreadable_simulated):
    """(good ids, {bad id: reason}) for a run; root can read ``locked.jpg`` for real."""
    good, bad = set(bad_input['good']), dict(bad_input['bad'])
    if os.geteuid() == 0 and not unreadable_simulated:
        del bad['locked']
        good.add('locked')
    return good, bad


def _assert_listed_with_reasons(listed: dict, bad: dict, img_dir) -> None:
    """Every bad entry (and nothing else) is listed, with its path and reason."""
    assert sorted(listed) == sorted(bad)
    for img_id, (path, reason) in listed.items():
        assert bad[img_id] in reason, (img_id, reason)
        assert path == str(img_dir / f'{img_id}.jpg')


def _tag_args(bad_input, out, tiny_tool_options, *extra):
    root = bad_input['root']
    return [
        TAG_CONFIG, '--work-dir', str(out / 'work_dir'), '--cfg-options',
        *tiny_tool_options['tag'], 'test_dataloader.dataset.type=MultiLabelListDataset',
        f'test_dataloader.dataset.data_root={root}', 'test_dataloader.dataset.ann_file=list.txt',
        'test_dataloader.dataset.data_prefix.img_path=JPEGImages',
        f'test_dataloader.dataset.pipeline.0.transforms.1.max_tokens={MAX_TOKENS}',
        f'test_evaluator.0.out_file={out / "tags.txt"}',
        f'test_evaluator.0.scores_file={out / "scores.jsonl"}', *extra
    ]


def _pl_args(bad_input, out, tiny_tool_options, config, *extra, ann_file='list_no_huge.txt'):
    root = bad_input['root']
    return [
        config, '--out', str(out), '--tags', str(root / 'tags.txt'), '--cfg-options',
        *tiny_tool_options['pl'], f'test_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.ann_file={ann_file}',
        f'test_dataloader.dataset.pipeline.0.transforms.1.max_tokens={MAX_TOKENS}', *extra
    ]


# ----------------------------------------------------------------- tagging
@pytest.fixture(scope='module')
def tagging_run(bad_input, tmp_path_factory, tiny_tool_options, tool_runner):
    """The tagging tool over the whole list, in a fresh interpreter, skipping errors."""
    out = tmp_path_factory.mktemp('tagging_run')
    proc = tool_runner.subprocess('tools/test.py',
                                  *_tag_args(bad_input, out, tiny_tool_options), peak_rss=True)
    return dict(out=out, log=proc.stdout + proc.stderr)


def test_tagging_tags_every_good_image_and_lists_every_bad_one(bad_input, tagging_run):
    out, log = tagging_run['out'], tagging_run['log']
    good, bad = _expected(bad_input, unreadable_simulated=False)
    tagged = [line.split()[0] for line in (out / 'tags.txt').read_text().splitlines()]
    assert tagged == sorted(good)
    scored = [json.loads(line)['img_id'] for line in (out / 'scores.jsonl').open()]
    assert scored == sorted(good)
    _assert_listed_with_reasons(_read_summary_lines(out / 'tags.skipped.txt'), bad,
                                bad_input['root'] / 'JPEGImages')
    assert f'{len(good)} tagged, {len(bad)} skipped' in log
    # The token cap scaled the 8000x6000 photo down, and said so.
    assert re.search(r"huge\.jpg' \(8000x6000\) exceeds max_tokens=64", log), log[-3000:]


def _run_rss_mb(log: str) -> float:
    """Peak RSS of a ``peak_rss`` run minus its RSS after imports, in MB."""
    base, peak = (re.search(rf'{key}_RSS_KB (\d+)', log) for key in ('BASE', 'PEAK'))
    assert base and peak, log[-2000:]
    return (int(peak.group(1)) - int(base.group(1))) / 1024


def test_large_image_does_not_exhaust_memory(tagging_run):
    assert _run_rss_mb(tagging_run['log']) < RUN_RSS_LIMIT_MB


def test_tagging_rerun_is_byte_identical(bad_input, tagging_run, tmp_path, tiny_tool_options,
                                         tool_runner):
    """Same inputs and config, another process: the same bytes in every output file."""
    tool_runner.inprocess('tools/test.py', *_tag_args(bad_input, tmp_path, tiny_tool_options))
    for name in ('tags.txt', 'scores.jsonl', 'tags.skipped.txt'):
        assert (tmp_path / name).read_bytes() == (tagging_run['out'] / name).read_bytes(), name


def test_tagging_on_error_raise_stops_at_a_bad_file(bad_input, tmp_path, tiny_tool_options,
                                                    tool_runner, unreadable):
    """The real loader path: two dataloader workers, the error re-raised in the main process."""
    with pytest.raises(Exception) as info:
        tool_runner.inprocess(
            'tools/test.py',
            *_tag_args(bad_input, tmp_path, tiny_tool_options,
                       'test_dataloader.dataset.pipeline.0.transforms.0.on_error=raise',
                       'test_dataloader.num_workers=2'))
    message = str(info.value)
    named = [i for i in bad_input['bad'] if f'{i}.jpg' in message]
    assert len(named) == 1, message
    assert bad_input['bad'][named[0]] in message
    assert not (tmp_path / 'tags.txt').exists()


def test_tagging_on_missing_raise_names_the_listed_files(bad_input, tmp_path, tiny_tool_options,
                                                         tool_runner):
    listed = r'3 listed images do not exist.*dangling.*folder.*ghost'
    with pytest.raises(FileNotFoundError, match=listed):
        tool_runner.inprocess(
            'tools/test.py',
            *_tag_args(bad_input, tmp_path, tiny_tool_options,
                       'test_dataloader.dataset.on_missing=raise'))


# ------------------------------------------------------------ pseudo labels
def test_pseudo_labels_write_every_good_image_and_list_every_bad_one(
        bad_input, tmp_path, tiny_tool_options, tool_runner, pl_list_config, unreadable):
    good, bad = _expected(bad_input, unreadable_simulated=True)
    good.remove('huge')
    tool_runner.inprocess('tools/generate_pseudo_labels.py',
                          *_pl_args(bad_input, tmp_path, tiny_tool_options, pl_list_config))
    pngs = sorted(f[:-4] for f in os.listdir(tmp_path) if f.endswith('.png'))
    assert pngs == sorted(good)
    for img_id in good:
        with Image.open(tmp_path / f'{img_id}.png') as mask:
            # Pseudo-label configs keep the stored orientation (exif_transpose=False).
            assert mask.mode == 'P' and mask.size[::-1] == bad_input['good'][img_id], img_id
    _assert_listed_with_reasons(_read_summary_lines(tmp_path / 'failed.txt'), bad,
                                bad_input['root'] / 'JPEGImages')
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert (summary['written'], summary['skipped'], summary['failed']) == (len(good), 0, len(bad))
    assert sorted(r['img_id'] for r in summary['failed_images']) == sorted(bad)


def test_pseudo_labels_on_error_raise_stops_at_a_bad_file(
        bad_input, tmp_path, tiny_tool_options, tool_runner, pl_list_config, unreadable):
    with pytest.raises(Exception) as info:
        tool_runner.inprocess(
            'tools/generate_pseudo_labels.py',
            *_pl_args(bad_input, tmp_path, tiny_tool_options, pl_list_config, '--on-error',
                      'raise'))
    message = str(info.value)
    if 'do not exist' in message:
        # --on-error raise also sets the dataset's on_missing='raise', so the
        # listed files that are missing stop the run before any is loaded.
        assert all(i in message for i in ('dangling', 'folder', 'ghost')), message
    else:
        named = [i for i in bad_input['bad'] if f'{i}.jpg' in message]
        assert len(named) == 1 and bad_input['bad'][named[0]] in message, message
    assert not (tmp_path / 'summary.json').exists()


@pytest.mark.slow
def test_pseudo_labels_of_a_huge_image(bad_input, tmp_path, tiny_tool_options, tool_runner,
                                       pl_list_config):
    """The 8000x6000 photo: a full-size mask, the token cap, and the memory it costs."""
    proc = tool_runner.subprocess(
        'tools/generate_pseudo_labels.py',
        *_pl_args(bad_input, tmp_path, tiny_tool_options, pl_list_config,
                  ann_file='list_huge.txt'), peak_rss=True)
    log = proc.stdout + proc.stderr
    assert "huge.jpg' (8000x6000) exceeds max_tokens=64" in log
    with Image.open(tmp_path / 'huge.png') as mask:
        assert mask.size == (8000, 6000)
    used = _run_rss_mb(log)
    # The labeler upsamples and takes the argmax in bands of rows, so the
    # full-size (K, H, W) float stack never exists.
    assert used < PL_HUGE_RSS_LIMIT_MB, f'the 8000x6000 image used {used:.0f} MB'
