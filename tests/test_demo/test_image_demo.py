"""demo/image_demo.py end to end, its web page, and the drawing helpers.

The demo runs in-process (its ``main(argv)``) on two real photos with a tiny
random CLIP; the page is parsed to check that it is well-formed HTML5 whose
every picture and link exists. A slow test renders it in headless Chromium.
"""
import html.parser
import importlib.util
import json
import os
import os.path as osp
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from tagclip_mmseg.testing.checkout import repo_root
from tagclip_mmseg.testing.images import write_folder_images
from tagclip_mmseg.visualization import (ReportEntry, draw_tag_panel, mask_label_names,
                                         overlay_heatmap, overlay_mask, unique_stems,
                                         write_index_html)

DEMO = osp.join(repo_root(__file__), 'demo', 'image_demo.py')
PHOTOS = ('skimage_chelsea.png', 'mpl_grace_hopper.jpg')
#: Headless browser for the page screenshot (Debian's ``chromium``; ``.ci/run``
#: installs it, and a skip for its absence fails ``--strict-skips``).
CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
VOID = {'meta', 'img', 'br', 'hr', 'link', 'input', 'source', 'wbr', 'area', 'base', 'col',
        'embed', 'track'}


def load_demo():
    spec = importlib.util.spec_from_file_location('image_demo', DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PageParser(html.parser.HTMLParser):
    """Collects links and checks that non-void tags are closed in order."""

    def __init__(self):
        super().__init__()
        self.stack, self.links, self.errors, self.doctype = [], [], [], None
        self.text = []

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ('src', 'href'):
            if key in attrs:
                self.links.append(attrs[key])
        if tag == 'html':
            self.lang = attrs.get('lang')
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f'unexpected </{tag}>')

    def handle_data(self, data):
        self.text.append(data)


def parse_page(path):
    parser = PageParser()
    with open(path, encoding='utf-8') as f:
        parser.feed(f.read())
    parser.close()
    assert parser.doctype == 'DOCTYPE html'
    assert parser.lang == 'en'
    assert not parser.errors and not parser.stack, (parser.errors, parser.stack)
    return parser


def check_links_exist(page_path, links):
    from urllib.parse import unquote, urlparse
    folder = osp.dirname(page_path)
    for link in links:
        url = urlparse(link)
        assert not url.scheme and not url.netloc, f'non-relative link {link!r}'
        assert osp.isfile(osp.join(folder, unquote(url.path))), f'missing {link!r}'


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory, real_images_dir, deep_tiny_clip_path):
    """Run the demo once on two real photos with the tiny 12-layer CLIP."""
    tmp = tmp_path_factory.mktemp('demo')
    inputs = tmp / 'in'
    inputs.mkdir()
    for name in PHOTOS:
        shutil.copy(osp.join(real_images_dir, 'images', name), inputs / name)
    out = tmp / 'out'
    code = load_demo().main([
        str(inputs), '--out-dir', str(out), '--checkpoint', deep_tiny_clip_path, '--classes',
        'cat', 'person', 'dog', '--background-words', 'sky', 'wall', '--device', 'cpu'
    ])
    return code, str(out)


def test_demo_writes_pictures_and_page(demo_run, capsys):
    code, out = demo_run
    assert code == 0
    summary = json.load(open(osp.join(out, 'results.json'), encoding='utf-8'))
    assert summary['pipeline_check'] is False
    assert summary['classes'] == ['cat', 'person', 'dog']
    assert [osp.basename(r['img_path']) for r in summary['images']] == sorted(PHOTOS)
    for r in summary['images']:
        stem = osp.splitext(osp.basename(r['img_path']))[0]
        files = set(os.listdir(osp.join(out, stem)))
        assert {'tags.jpg', 'mask.jpg'} <= files
        cams = sorted(f for f in files if f.startswith('cam_'))
        assert len(cams) == len(r['tags']) >= 1
        w, h = Image.open(r['img_path']).size
        assert Image.open(osp.join(out, stem, 'tags.jpg')).size == (w, h)
        assert Image.open(osp.join(out, stem, cams[0])).size == (w, h)
        legend = Image.open(osp.join(out, stem, 'mask.jpg')).size
        assert legend[0] == w and legend[1] > h


def test_demo_page_is_valid_and_complete(demo_run):
    _, out = demo_run
    page = osp.join(out, 'index.html')
    parser = parse_page(page)
    imgs = [link for link in parser.links if link.endswith('.jpg')]
    assert len(imgs) >= 2 * 3  # tags, mask and at least one CAM per photo (src and href)
    check_links_exist(page, parser.links)
    assert 'PIPELINE CHECK' not in ''.join(parser.text)


def test_pipeline_check_without_weights(tmp_path, real_images_dir, monkeypatch, capsys):
    """No weights anywhere: a labelled run on random weights, never a silent one."""
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))  # no ~/.cache/clip/ViT-B-16.pt
    image = tmp_path / 'cat.png'
    Image.open(osp.join(real_images_dir, 'images', 'skimage_chelsea.png')).resize(
        (96, 64)).save(image)
    out = tmp_path / 'out'
    code = load_demo().main([str(image), '--out-dir', str(out), '--classes', 'cat', 'dog',
                             '--device', 'cpu'])
    assert code == 0
    console = capsys.readouterr().out
    assert console.lstrip('!\n').startswith('PIPELINE CHECK')
    assert 'ViT-B-16.pt' in console and 'meaningless' in console
    parser = parse_page(out / 'index.html')
    text = ' '.join(parser.text)
    assert text.index('PIPELINE CHECK') < text.index('cat.png')
    assert json.load(open(out / 'results.json'))['pipeline_check'] is True
    for cache in ('tagclip_mmseg', 'clip'):  # nothing random reached the user's caches
        assert not (tmp_path / 'home' / '.cache' / cache).exists()


def test_demo_reports_bad_arguments(tmp_path, capsys):
    demo = load_demo()
    assert demo.main([str(tmp_path / 'nope.jpg'), '--out-dir', str(tmp_path)]) == 2
    assert 'does not exist' in capsys.readouterr().err
    # Name files go through the shared reader: blank lines are refused with the line.
    classes = tmp_path / 'classes.txt'
    classes.write_text('cat\n\nperson,people, human\n')
    Image.new('RGB', (8, 8)).save(tmp_path / 'x.jpg')
    assert demo.main([str(tmp_path / 'x.jpg'), '--out-dir', str(tmp_path / 'out'), '--classes',
                      str(classes)]) == 2
    assert 'line 2: blank line' in capsys.readouterr().err


def test_demo_vocabulary_from_name_files(tmp_path):
    demo = load_demo()
    classes, words = tmp_path / 'cls_voc.txt', tmp_path / 'bg.txt'
    classes.write_text('sky; wall, fence\ncat\nperson; people\n')
    words.write_text('road\nsea')

    def vocabulary(*argv):
        return demo.vocabulary(demo.parse_args([str(tmp_path), '--out-dir', str(tmp_path),
                                                *argv]))

    assert vocabulary('--classes', str(classes)) == (
        [['sky', 'wall, fence'], 'cat', ['person', 'people']], None)
    assert vocabulary('--classes-file', str(classes), '--background-line') == (
        ['cat', ['person', 'people']], ['sky', 'wall, fence'])
    assert vocabulary('--classes', str(classes), '--classes-sep', ',', '--background-line',
                      '--background-words', str(words)) == (
        ['cat', 'person; people'], ['road', 'sea'])
    assert vocabulary('--classes', 'cat', 'espresso cup') == (['cat', 'espresso cup'], None)


def test_page_escapes_names(tmp_path):
    (tmp_path / 'a b&c').mkdir()
    Image.new('RGB', (4, 4)).save(tmp_path / 'a b&c' / 'x#1.jpg')
    entry = ReportEntry(name='<script>alert(1)</script>.jpg', source='/x/"quoted".jpg',
                        tags=['<b>'], scores={'<b>': 0.5, 'a&b': 0.25},
                        images=[('tags & <scores>', 'a b&c/x#1.jpg')])
    failed = ReportEntry(name='broken.jpg', error='truncated <data>')
    page = tmp_path / 'index.html'
    write_index_html(str(page), [entry, failed], title='T <1>', banner=('B & b', ['<p>']))
    source = page.read_text()
    assert '<script>' not in source and '<b>' not in source
    parser = parse_page(page)
    check_links_exist(str(page), parser.links)
    assert 'truncated <data>' in ''.join(parser.text)


def test_unique_stems():
    assert unique_stems(['cat', 'cat', 'Cat', 'cat-2', 'a/b c', '..']) == [
        'cat', 'cat-2', 'Cat-3', 'cat-2-2', 'a_b_c', 'item'
    ]


def test_drawing_shapes():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    panel = draw_tag_panel(img, ['cat'], {'cat': 0.9, 'dog': 0.1}, title='CHECK')
    assert panel.shape == img.shape and not np.array_equal(panel, img)
    heat = overlay_heatmap(img, rng.random((5, 6)))
    assert heat.shape == img.shape
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 10:30] = 2
    mask[0, 0] = 255
    names = mask_label_names(['cat', 'dog'])
    assert names == {0: 'background', 1: 'cat', 2: 'dog', 255: 'ignore'}
    over = overlay_mask(img, mask, names)
    assert over.shape[1] == 60 and over.shape[0] > 40
    np.testing.assert_array_equal(over[30:40, 40:60], img[30:40, 40:60])  # background kept
    with pytest.raises(ValueError, match='mask shape'):
        overlay_mask(img, mask[:10], names)


@pytest.mark.slow
def test_page_renders_in_headless_chromium(demo_run, tmp_path):
    if not osp.exists(CHROMIUM):
        pytest.skip(f'{CHROMIUM} not found; install Debian\'s "chromium" package '
                    '(apt-get install -y chromium) to render the demo page')
    _, out = demo_run
    shot = tmp_path / 'page.png'
    cmd = [
        CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
        '--no-first-run', '--disable-background-networking', '--disable-component-update',
        '--disable-sync', f'--user-data-dir={tmp_path / "profile"}', f'--screenshot={shot}',
        '--window-size=1200,900', 'file://' + osp.abspath(osp.join(out, 'index.html'))
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), f'no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}'
    pixels = np.asarray(Image.open(shot).convert('RGB'))
    assert pixels.shape[:2] == (900, 1200)
    assert pixels.reshape(-1, 3).std(axis=0).max() > 0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # photos, not just text


REPO = repo_root(__file__)


def test_demo_reports_a_wrong_shaped_checkpoint_without_traceback(tmp_path, tiny_clip, capsys):
    state = dict(tiny_clip.state_dict())
    key = 'visual.ln_post.weight'
    state[key] = torch.ones(state[key].shape[0] + 5)
    path = tmp_path / 'wrong.pth'
    torch.save(state, path)
    write_folder_images(tmp_path / 'photos')
    assert load_demo().main([str(tmp_path / 'photos'), '--out-dir', str(tmp_path / 'out'),
                             '--checkpoint', str(path), '--classes', 'cat', '--device',
                             'cpu']) == 2
    captured = capsys.readouterr()
    assert key in captured.err and 'Traceback' not in captured.err
    assert 'model ready' not in captured.out


def test_demo_prints_vocabulary_errors_before_model_ready(tmp_path, deep_tiny_clip_path,
                                                         capsys):
    write_folder_images(tmp_path / 'photos')
    assert load_demo().main([str(tmp_path / 'photos'), '--out-dir', str(tmp_path / 'out'),
                             '--checkpoint', deep_tiny_clip_path, '--classes', 'Cat', 'cat',
                             '--device', 'cpu']) == 2
    captured = capsys.readouterr()
    assert "duplicate class names would get identical embeddings: 'Cat'" in captured.err
    assert 'Traceback' not in captured.err and 'model ready' not in captured.out
