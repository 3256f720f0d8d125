"""A pseudo-label folder is resumed only with the settings that made it.

Only masks of the image's size are kept.
"""
import json

import pytest
from PIL import Image

from tagclip_mmseg.testing.images import random_photo

PL_SCRIPT = 'tools/generate_pseudo_labels.py'


@pytest.fixture(scope='module')
def pl_images(tmp_path_factory):
    root = tmp_path_factory.mktemp('pl_resume')
    (root / 'JPEGImages').mkdir()
    ids = [f'img{i}' for i in range(4)]
    for i, img_id in enumerate(ids):
        random_photo(20 + i, 40 + 8 * i, 48 - 4 * i).save(root / 'JPEGImages' / f'{img_id}.jpg')
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
