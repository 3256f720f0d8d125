"""Inputs that used to give a wrong result with exit code 0 (issue 13, items 1-5).

* image ids with spaces, tabs and non-ASCII characters round-trip through the
  tags file into stage 2;
* a pseudo-label folder is resumed only with the settings that made it, and
  only masks of the image's size are kept;
* NaN / inf weights are refused at load, NaN / inf scores by the writers;
* an image too small to score (1x1, smaller than a patch) gets no tag;
* an EXIF-rotated photo has one orientation in tags, masks and training.
"""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

from tagclip_mmseg.datasets.label_files import read_label_file

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TAG_CONFIG = 'configs/tagclip/tagclip_vit-b16_folder.py'
PL_SCRIPT = 'tools/generate_pseudo_labels.py'
VOC_PSEUDO_CONFIG = osp.join(REPO, 'configs', 'pseudo_labelers',
                             'clip-es_vit-b16_voc12-val_tagclip-tags.py')
#: Ids that a space-separated line cannot hold as they are.
ODD_IDS = ('IMG 0001', 'tab\there', 'кот и пёс', 'nbsp\u00a0ideographic\u3000space', '50% off,2')
V2_VOC = 'deeplabv2_r101-d8-msc_1xb5-accum2-20k_voc12aug-pseudo-321x321.py'
#: Stored (W, H) of the EXIF-rotated photo; orientation 6 shows it as H x W.
STORED_WH = (56, 32)


def _photo(seed: int, w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# ------------------------------------------------------------ 1: image ids
def _tag_sample(img_id, tags, scores):
    from mmpretrain.structures import DataSample
    sample = DataSample(metainfo=dict(img_id=img_id, img_path=f'/d/{img_id}.jpg',
                                      ori_shape=(4, 4)))
    sample.set_pred_score(torch.tensor(scores, dtype=torch.float))
    sample.set_pred_label(torch.tensor(tags, dtype=torch.long))
    return sample.to_dict()


def test_tags_file_round_trips_ids_with_spaces_tabs_and_unicode(tmp_path):
    from tagclip_mmseg.evaluation import TagFileWriter
    expected = {img_id: [i % 3, 3 + i] for i, img_id in enumerate(ODD_IDS)}
    expected['plain_id'] = []
    writer = TagFileWriter(out_file=str(tmp_path / 'tags.txt'))
    writer.process({}, [_tag_sample(i, t, [0.1] * 8) for i, t in expected.items()])
    writer.compute_metrics(writer.results)
    assert read_label_file(tmp_path / 'tags.txt', num_classes=8) == {
        k: sorted(v) for k, v in sorted(expected.items())}
    text = (tmp_path / 'tags.txt').read_text(encoding='utf-8')
    assert 'IMG%200001 0 3\n' in text and 'plain_id\n' in text and 'кот%20и%20пёс' in text


# --------------------------------------------------- 3: non-finite weights
def test_checkpoint_with_nan_or_inf_weights_is_refused_naming_the_tensors(tmp_path, tiny_clip):
    from tagclip_mmseg.models.clip import CheckpointError, load_clip
    state = {k: v.clone() for k, v in tiny_clip.state_dict().items()}
    state['visual.transformer.resblocks.1.mlp.c_fc.weight'][3, 5] = float('nan')
    state['token_embedding.weight'][7, 0] = float('inf')
    path = tmp_path / 'broken.pth'
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_clip(str(path))
    message = str(info.value)
    assert 'visual.transformer.resblocks.1.mlp.c_fc.weight' in message
    assert 'token_embedding.weight' in message and 'NaN or inf' in message
    assert 'visual.conv1.weight' not in message


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_tag_writer_refuses_non_finite_scores(tmp_path, bad):
    from tagclip_mmseg.evaluation import TagFileWriter
    writer = TagFileWriter(out_file=str(tmp_path / 'tags.txt'),
                           scores_file=str(tmp_path / 'scores.jsonl'))
    with pytest.raises(ValueError,
                       match=r'image b .*scores hold non-finite values .* first at index \[1\]'):
        writer.process({}, [_tag_sample('a', [0], [0.3, 0.2, 0.1]),
                            _tag_sample('b', [1], [0.3, bad, 0.1])])
    assert not (tmp_path / 'tags.txt').exists() and not (tmp_path / 'scores.jsonl').exists()


def test_pseudo_label_writer_refuses_non_finite_cams(tmp_path):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from tagclip_mmseg.evaluation import PseudoLabelWriter
    sample = SegDataSample(metainfo=dict(img_id='a', img_path='/d/a.jpg', ori_shape=(3, 4),
                                         tags=[2]))
    sample.pred_sem_seg = PixelData(data=torch.zeros(1, 3, 4, dtype=torch.long))
    cams = torch.full((1, 3, 4), 0.25)
    cams[0, 1, 2] = float('nan')
    sample.set_metainfo(dict(cams=cams))
    writer = PseudoLabelWriter(out_dir=str(tmp_path), save_cams=True)
    with pytest.raises(ValueError, match='NaN or inf'):
        writer.process({}, [sample.to_dict()])
    assert not (tmp_path / 'a.npz').exists()


# ---------------------------------------------------------- 4: tiny images
@pytest.mark.parametrize('size', [(1, 1), (5, 9), (16, 16)])
def test_image_too_small_to_score_gets_no_tag(tiny_clip, size):
    """One patch (or less): nothing singles a class out, so nothing is tagged."""
    from mmpretrain.structures import DataSample

    from tagclip_mmseg.datasets.transforms import ResizeToPatchMultiple
    from tagclip_mmseg.models.taggers import TagCLIP
    tagger = TagCLIP(class_names=['cat', 'dog', 'car', 'tree', 'sky'], background_words=['wall'],
                     templates=['a photo of a {}.'], clip=tiny_clip, avg_layers=(0, 1),
                     vote_k=2, cwr_crop_size=32, tag_ratio=0.35)
    img = _photo(3, *size)
    resized = ResizeToPatchMultiple(patch_size=16)(dict(img=np.asarray(img)))['img']
    image = torch.from_numpy(resized).permute(2, 0, 1).float()
    sample = tagger.predict([tagger.data_preprocessor({'inputs': [image]})['inputs'][0]],
                            [DataSample()])[0]
    scores = sample.pred_score
    assert torch.isfinite(scores).all()
    assert sample.pred_label.numel() == 0, (scores, sample.pred_label)


def test_relative_threshold_tags_nothing_on_equal_or_nan_scores():
    from tagclip_mmseg.utils import relative_threshold_mask
    scores = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.3, 0.3], [float('nan')] * 3,
                           [0.1, 0.7, 0.2]])
    mask = relative_threshold_mask(scores, 0.35)
    assert mask.tolist() == [[False] * 3, [False] * 3, [False] * 3, [False, True, False]]


# ------------------------------------------ 1, 4, 5: tags -> masks -> training
def _save_rotated(path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; shown rotated by 90 degrees
    _photo(11, *STORED_WH).save(path, 'JPEG', exif=exif, quality=92)


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """A folder of user photos: odd names, an EXIF-rotated one, a 1x1 one."""
    root = tmp_path_factory.mktemp('photos')
    for i, img_id in enumerate(ODD_IDS):
        _photo(i, 48 + 8 * i, 40).save(root / f'{img_id}.jpg', quality=92)
    _save_rotated(root / 'rotated photo.jpg')
    Image.new('RGB', (1, 1), (200, 30, 30)).save(root / 'one pixel.jpg', quality=92)
    return root


def _folder_pseudo_config(tmp_path) -> str:
    """docs/add_dataset.md's recipe for a folder of photos, without GT masks."""
    path = tmp_path / 'folder_pseudo.py'
    path.write_text(
        f'_base_ = [{VOC_PSEUDO_CONFIG!r}]\n'
        'test_dataloader = dict(dataset=dict(\n'
        "    ann_file='', data_prefix=dict(_delete_=True, img_path=''),\n"
        '    pipeline=[t for t in _base_.upright_pseudo_label_pipeline\n'
        "              if t['type'] != 'LoadAnnotations']))\n"
        "test_evaluator = [dict(type='PseudoLabelWriter', out_dir=_base_.pseudo_label_dir)]\n")
    return str(path)


def test_user_photos_keep_ids_and_orientation_through_tags_masks_and_training(
        photos, tmp_path, tiny_tool_options, tool_runner):
    from mmcv.transforms import Compose
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    import tagclip_mmseg  # noqa: F401
    ids = sorted(ODD_IDS + ('rotated photo', 'one pixel'))
    # 1. tags
    tool_runner.inprocess(
        'tools/test.py', TAG_CONFIG, '--work-dir', str(tmp_path / 'tag_logs'), '--cfg-options',
        *tiny_tool_options['tag'], f'test_dataloader.dataset.data_root={photos}',
        f'test_evaluator.0.out_file={tmp_path / "tags.txt"}',
        f'test_evaluator.0.scores_file={tmp_path / "scores.jsonl"}')
    tags = read_label_file(tmp_path / 'tags.txt', num_classes=20)
    assert sorted(tags) == ids
    assert tags['one pixel'] == []  # nothing supports any class
    scores_text = (tmp_path / 'scores.jsonl').read_text(encoding='utf-8')
    scored = [json.loads(line)['img_id'] for line in scores_text.splitlines()]
    assert scored == ids
    # 2. masks, from that tags file
    out = tmp_path / 'masks'
    tool_runner.inprocess(PL_SCRIPT, _folder_pseudo_config(tmp_path), '--out', str(out),
                          '--tags', str(tmp_path / 'tags.txt'), '--cfg-options',
                          *tiny_tool_options['pl'], f'test_dataloader.dataset.data_root={photos}')
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['written'], summary['failed']) == (len(ids), 0)
    for img_id in ids:
        with Image.open(out / f'{img_id}.png') as mask, Image.open(photos / f'{img_id}.jpg') as im:
            upright = im.size[::-1] if img_id == 'rotated photo' else im.size
            assert mask.size == upright, img_id
    with Image.open(out / 'one pixel.png') as mask:
        assert np.asarray(mask).tolist() == [[0]]  # no tag: background
    # 3. a training data pipeline (docs/add_dataset.md: upright_train_pipeline)
    seg_cfg = Config.fromfile(osp.join(REPO, 'configs', 'deeplab', V2_VOC))
    # The config's names resolve in mmseg's scope (a Runner sets it; here no
    # Runner is left), else `LoadAnnotations` is mmcv's box loader.
    with DefaultScope.overwrite_default_scope('mmseg'):
        load = Compose([t for t in seg_cfg.upright_train_pipeline
                        if t['type'] in ('LoadImageFromFile', 'LoadAnnotations')])
    loaded = load(dict(img_path=str(photos / 'rotated photo.jpg'),
                       seg_map_path=str(out / 'rotated photo.png'), reduce_zero_label=False,
                       seg_fields=[]))
    assert loaded['img'].shape[:2] == loaded['gt_seg_map'].shape == STORED_WH
    # (H, W) upright = the stored (W, H)


def test_benchmark_configs_read_stored_pixels_in_every_stage():
    """VOC / COCO labels refer to stored pixels: tags, masks and training agree on them."""
    from mmengine.config import Config

    def loaders(pipeline):
        for t in pipeline:
            resume = t['type'] in ('SkipTagged', 'SkipExisting')
            yield from loaders(t['transforms']) if resume else [t]

    def stored(cfg_pipeline) -> bool:
        found = [t for t in loaders(cfg_pipeline) if t['type'] in ('LoadImageRobust',
                                                                   'LoadImageFromFile')]
        assert found
        return all(t.get('exif_transpose') is False
                   or t.get('color_type') == 'color_ignore_orientation' for t in found)

    cfg = lambda *p: Config.fromfile(osp.join(REPO, 'configs', *p))  # noqa: E731
    tag = cfg('tagclip', 'tagclip_vit-b16_voc12-trainaug.py')
    assert stored(tag.test_dataloader.dataset.pipeline)
    for name in ('clip-es_vit-b16_voc12-trainaug_tagclip-tags.py',
                 'clip-es_vit-b16_coco14-train_tagclip-tags.py'):
        assert stored(cfg('pseudo_labelers', name).test_dataloader.dataset.pipeline), name
    for name in (V2_VOC, 'deeplabv2_r101-d8-msc_1xb10-100k_coco-object-pseudo-321x321.py',
                 'deeplabv3plus_r101-d8_4xb4-80k_coco-object-pseudo-512x512.py'):
        seg = cfg('deeplab', name)
        assert stored(seg.train_dataloader.dataset.pipeline), name
        assert stored(seg.val_dataloader.dataset.pipeline), name
    # ... and the user-photo trio turns photos upright in every stage.
    folder = cfg('tagclip', 'tagclip_vit-b16_folder.py')
    assert not stored(folder.test_dataloader.dataset.pipeline)
    seg = cfg('deeplab', V2_VOC)
    assert not stored(seg.upright_train_pipeline)
    assert not stored(cfg('pseudo_labelers', 'clip-es_vit-b16_voc12-val_tagclip-tags.py')
                      .upright_pseudo_label_pipeline)


# --------------------------------------------- 2: pseudo-label resume check
@pytest.fixture(scope='module')
def pl_images(tmp_path_factory):
    root = tmp_path_factory.mktemp('pl_resume')
    (root / 'JPEGImages').mkdir()
    ids = [f'img{i}' for i in range(4)]
    for i, img_id in enumerate(ids):
        _photo(20 + i, 40 + 8 * i, 48 - 4 * i).save(root / 'JPEGImages' / f'{img_id}.jpg')
    (root / 'tags_a.txt').write_text('img0 1\nimg1 2 5\nimg2\nimg3 7\n')
    (root / 'tags_b.txt').write_text('img0 1\nimg1 2 6\nimg2\nimg3 7\n')
    return root


def _pl(tool_runner, images, out, tiny_tool_options, config, tags='tags_a.txt', flags=(),
        options=()):
    tool_runner.inprocess(
        PL_SCRIPT, config, '--out', str(out), '--tags', str(images / tags), *flags,
        '--cfg-options', *tiny_tool_options['pl'], f'test_dataloader.dataset.data_root={images}',
        *options)
    return json.loads((out / 'summary.json').read_text())


def test_pseudo_label_resume_refuses_other_settings(pl_images, tmp_path, tiny_tool_options,
                                                    tool_runner, pl_list_config):
    out = tmp_path / 'out'
    first = _pl(tool_runner, pl_images, out, tiny_tool_options, pl_list_config)
    assert first['written'] == 4
    masks = {p.name: p.read_bytes() for p in out.glob('*.png')}
    with pytest.raises(RuntimeError) as info:
        _pl(tool_runner, pl_images, out, tiny_tool_options, pl_list_config, 'tags_b.txt')
    assert 'tags' in str(info.value) and '--overwrite' in str(info.value)
    with pytest.raises(RuntimeError) as info:
        _pl(tool_runner, pl_images, out, tiny_tool_options, pl_list_config,
            options=['model.caa_layers=[1,2]'])
    assert 'model.caa_layers: [0, 1, 2] -> [1, 2]' in str(info.value)
    assert {p.name: p.read_bytes() for p in out.glob('*.png')} == masks  # nothing touched
    # Same settings: everything is kept.
    assert _pl(tool_runner, pl_images, out, tiny_tool_options, pl_list_config)['skipped'] == 4
    # --overwrite recomputes with the new tags; the folder then resumes with them.
    redone = _pl(tool_runner, pl_images, out, tiny_tool_options, pl_list_config, 'tags_b.txt',
                 flags=['--overwrite'])
    assert redone['written'] == 4
    assert _pl(tool_runner, pl_images, out, tiny_tool_options, pl_list_config,
               'tags_b.txt')['skipped'] == 4


def test_interrupted_overwrite_is_not_resumed(pl_images, tmp_path, tiny_tool_options,
                                              tool_runner, pl_list_config):
    out = tmp_path / 'out'
    _pl(tool_runner, pl_images, out, tiny_tool_options, pl_list_config)
    settings = json.loads((out / 'settings.json').read_text())
    assert settings['state'] == 'resumable'
    # What a kill during an --overwrite run leaves: the new settings, not all masks redone.
    (out / 'settings.json').write_text(json.dumps(dict(settings, state='overwriting')))
    with pytest.raises(RuntimeError, match='interrupted'):
        _pl(tool_runner, pl_images, out, tiny_tool_options, pl_list_config)


def test_masks_without_a_settings_record_are_not_kept(pl_images, tmp_path, tiny_tool_options,
                                                      tool_runner, pl_list_config):
    out = tmp_path / 'out'
    out.mkdir()
    Image.new('P', (40, 48)).save(out / 'img0.png')
    with pytest.raises(RuntimeError, match='no settings.json'):
        _pl(tool_runner, pl_images, out, tiny_tool_options, pl_list_config)


def test_pseudo_label_resume_recomputes_a_mask_of_the_wrong_size(pl_images, tmp_path,
                                                                 tiny_tool_options, tool_runner,
                                                                 pl_list_config):
    out = tmp_path / 'out'
    _pl(tool_runner, pl_images, out, tiny_tool_options, pl_list_config)
    good = (out / 'img1.png').read_bytes()
    Image.new('P', (5, 5)).save(out / 'img1.png')  # a valid PNG of the wrong size
    summary = _pl(tool_runner, pl_images, out, tiny_tool_options, pl_list_config)
    assert (summary['written'], summary['skipped']) == (1, 3)
    assert (out / 'img1.png').read_bytes() == good
