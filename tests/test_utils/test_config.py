"""``--data-root`` (``load_config``): every dataset of a config reads the given folder."""
import argparse
import os.path as osp

import pytest

from tagclip_mmseg.testing.checkout import repo_root
from tagclip_mmseg.testing.images import (FOLDER_CONFIG, FOLDER_IDS, scores_file_option,
                                          write_folder_images)

REPO = repo_root(__file__)


def test_data_root_flag_takes_spaces_and_unicode(tmp_path, tiny_tool_options, tool_runner):
    root = tmp_path / 'my photos, été' / 'sous-dossier ü'
    write_folder_images(root)
    out = tmp_path / 'tags.txt'
    tool_runner.inprocess(
        'tools/test.py', FOLDER_CONFIG, '--data-root', str(root), '--work-dir',
        str(tmp_path / 'work'), '--cfg-options', *tiny_tool_options['tag'],
        f'test_evaluator.0.out_file={out}', *scores_file_option(out))
    assert [line.split()[0] for line in out.read_text().splitlines()] == sorted(FOLDER_IDS)
    with pytest.raises(FileNotFoundError, match='--data-root'):
        tool_runner.inprocess('tools/test.py', FOLDER_CONFIG, '--data-root',
                              str(tmp_path / 'no such folder'))


def test_set_data_root_reaches_every_dataset(tmp_path):
    from mmengine.config import Config

    from tagclip_mmseg.utils import load_config
    config = osp.join(REPO, 'configs', 'deeplab',
                      'deeplabv2_r101-d8-msc_1xb5-accum2-20k_voc12aug-pseudo-321x321.py')
    root = tmp_path / 'my photos' / 'VOC, 2012 ü'
    root.mkdir(parents=True)
    args = argparse.Namespace(config=config, launcher='none', cfg_options=None,
                              data_root=str(root))
    cfg = load_config(args)
    assert cfg.data_root == str(root)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == str(root), loader
        assert Config.fromfile(config)[loader].dataset.data_root != str(root)
