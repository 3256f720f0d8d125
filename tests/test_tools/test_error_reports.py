"""Bad vocabularies, label/tag files and checkpoints, as the tools report them.

Each case runs the real ``tools/test.py`` or ``tools/generate_pseudo_labels.py``
(in this interpreter, for speed) and checks that the run stops before doing
any work with a one-line error that names the culprit and says what is wrong,
or, for inputs that are merely unusual (non-ASCII names, blank lines, tabs),
that the run succeeds. The parsers and validators themselves are unit-tested
in ``test_datasets/test_label_files.py``,
``test_models/test_clip/test_text_classifier.py`` and
``test_models/test_clip/test_checkpoint.py``.
"""
import numpy as np
import pytest
import torch
from PIL import Image

TAG_CONFIG = 'configs/tagclip/tagclip_vit-b16_folder.py'
IDS = ('apple', 'boat', 'cloud')


@pytest.fixture(scope='module')
def data(tmp_path_factory, tiny_clip_factory):
    """Three images in ``JPEGImages``, a split list, and bad checkpoints."""
    root = tmp_path_factory.mktemp('errors')
    (root / 'JPEGImages').mkdir()
    rng = np.random.default_rng(0)
    for i, img_id in enumerate(IDS):
        pixels = rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / 'JPEGImages' / f'{img_id}.jpg')
    (root / 'list.txt').write_text(''.join(i + '\n' for i in IDS))
    good = root / 'tiny.pth'
    tiny_clip_factory(path=good)
    (root / 'truncated.pth').write_bytes(good.read_bytes()[:4096])
    torch.save({'backbone.conv1.weight': torch.zeros(8, 3, 3, 3),
                'head.fc.weight': torch.zeros(10, 8)}, root / 'resnet_classifier.pth')
    tiny_clip_factory(path=root / 'two_layers.pth', vision_layers=2)
    tiny_clip_factory(path=root / 'patch32.pth', vision_patch_size=32)
    return root


def tag(tool_runner, data, tiny_tool_options, tmp_path, *extra):
    """The tagging tool on the folder config, tiny model, outputs in ``tmp_path``."""
    tool_runner.inprocess(
        'tools/test.py', TAG_CONFIG, '--work-dir', str(tmp_path / 'work_dir'), '--cfg-options',
        *tiny_tool_options['tag'], f'test_dataloader.dataset.data_root={data / "JPEGImages"}',
        f'test_evaluator.0.out_file={tmp_path / "tags.txt"}',
        f'test_evaluator.0.scores_file={tmp_path / "scores.jsonl"}', *extra)


def label(tool_runner, data, tiny_tool_options, pl_list_config, tmp_path, tags_text,
          *cfg_options, flags=()):
    """The pseudo-label tool with a tags file of ``tags_text``."""
    tags = tmp_path / 'tags.txt'
    tags.write_text(tags_text)
    tool_runner.inprocess(
        'tools/generate_pseudo_labels.py', pl_list_config, '--out', str(tmp_path / 'out'),
        '--tags', str(tags), *flags, '--cfg-options', *tiny_tool_options['pl'],
        f'test_dataloader.dataset.data_root={data}', 'test_dataloader.dataset.ann_file=list.txt',
        *cfg_options)


def one_line_error(excinfo, *fragments: str) -> str:
    """The error is one line and contains every fragment."""
    message = str(excinfo.value)
    assert '\n' not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


GOOD_TAGS = 'apple 7\nboat 3 14\ncloud\n'


# --------------------------------------------------------------- vocabulary
@pytest.mark.parametrize('classes, error, fragments', [
    ('[]', ValueError, ['classes is empty']),
    ('[cat,dog,cat]', ValueError, ['must be unique', "'cat'"]),
    ('[cat,' + 'enormous' * 40 + ']', ValueError, ["CLIP's 77-token context", 'enormous']),
], ids=['empty', 'duplicates', 'longer-than-context'])
def test_tagging_vocabulary_errors(classes, error, fragments, data, tmp_path, tiny_tool_options,
                                   tool_runner):
    with pytest.raises(error) as info:
        tag(tool_runner, data, tiny_tool_options, tmp_path,
            f'test_dataloader.dataset.metainfo.classes={classes}')
    one_line_error(info, *fragments)
    assert not (tmp_path / 'tags.txt').exists()


def test_non_ascii_class_names_work(data, tmp_path, tiny_tool_options, tool_runner):
    classes = '[chat,café,狗,Ölfass,naïve résumé]'
    option = f'test_dataloader.dataset.metainfo.classes={classes}'
    tag(tool_runner, data, tiny_tool_options, tmp_path / 'first', option)
    lines = (tmp_path / 'first' / 'tags.txt').read_text().splitlines()
    assert [line.split()[0] for line in lines] == list(IDS)
    assert all(0 <= int(t) < 5 for line in lines for t in line.split()[1:])
    # The second run reads the text embeddings of these names from the cache.
    tag(tool_runner, data, tiny_tool_options, tmp_path / 'second', option)
    for name in ('tags.txt', 'scores.jsonl'):
        assert (tmp_path / 'first' / name).read_bytes() == (tmp_path / 'second' /
                                                            name).read_bytes()


@pytest.mark.parametrize('class_names, fragment', [
    ('[]', 'vocabulary is empty'),
    ('[cat,cat,dog]', "class_names: duplicate class names would get identical embeddings: "
                      "'cat' (index 0) and 'cat' (index 1)"),
], ids=['empty', 'duplicates'])
def test_pseudo_label_vocabulary_errors(class_names, fragment, data, tmp_path, tiny_tool_options,
                                        tool_runner, pl_list_config):
    with pytest.raises(ValueError) as info:
        label(tool_runner, data, tiny_tool_options, pl_list_config, tmp_path, GOOD_TAGS,
              f'model.class_names={class_names}')
    one_line_error(info, fragment)


# ------------------------------------------------------- label and tag files
def test_tagging_label_file_errors_name_file_and_line(data, tmp_path, tiny_tool_options,
                                                      tool_runner):
    from tagclip_mmseg.datasets import LabelFileError
    cases = {
        'unknown_class.txt': ('apple 0\nboat 25\n', ':2', 'outside the 20 classes'),
        'commas.txt': ('apple 1,2\n', ':1', 'commas are not separators'),
    }
    for name, (text, line, fragment) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(LabelFileError) as info:
            tag(tool_runner, data, tiny_tool_options, tmp_path,
                f'test_dataloader.dataset.ann_file={tmp_path / name}')
        one_line_error(info, f'{name}{line}', fragment)


def test_tagging_label_file_with_blank_lines_and_tabs(data, tmp_path, tiny_tool_options,
                                                      tool_runner):
    labels = tmp_path / 'labels.txt'
    labels.write_text('\n\napple\t7\n  \nboat 3\t14\n\ncloud\n\n')
    tag(tool_runner, data, tiny_tool_options, tmp_path,
        f'test_dataloader.dataset.ann_file={labels}')
    lines = (tmp_path / 'tags.txt').read_text().splitlines()
    assert [line.split()[0] for line in lines] == list(IDS)


@pytest.mark.parametrize('tags_text, error, fragments', [
    ('apple 7\nboat 20\ncloud\n', 'LabelFileError', ['tags.txt:2', 'outside the 20 classes']),
    ('apple 7\nboat 3,14\ncloud\n', 'LabelFileError', ['tags.txt:2', 'commas are not separators']),
    ('apple 7\nboat;3\ncloud 1\n', 'ValueError', ['no line in', "'boat'", 'Did the tagger finish']),
    ('apple 7\nboat x\ncloud\n', 'LabelFileError', ['tags.txt:2', "'x'", 'not an integer']),
], ids=['unknown-class-id', 'commas', 'semicolon', 'not-a-number'])
def test_pseudo_label_tag_file_errors(tags_text, error, fragments, data, tmp_path,
                                      tiny_tool_options, tool_runner, pl_list_config):
    with pytest.raises(ValueError) as info:
        label(tool_runner, data, tiny_tool_options, pl_list_config, tmp_path, tags_text)
    assert type(info.value).__name__ == error
    one_line_error(info, *fragments)
    assert not (tmp_path / 'out' / 'summary.json').exists()


def test_pseudo_label_tag_file_with_blank_lines_tabs_and_unknown_images(
        data, tmp_path, tiny_tool_options, tool_runner, pl_list_config):
    label(tool_runner, data, tiny_tool_options, pl_list_config, tmp_path,
          '\napple\t7\n\n\nboat 3 14\nnot_in_the_split 5\ncloud\n\n')
    assert sorted(p.name for p in (tmp_path / 'out').glob('*.png')) == [
        f'{i}.png' for i in IDS]


# --------------------------------------------------------------- checkpoints
@pytest.mark.parametrize('checkpoint, error, fragments', [
    ('missing.pth', 'FileNotFoundError', ['CLIP checkpoint not found', 'missing.pth',
                                          'Give a model name to fetch it']),
    ('truncated.pth', 'CheckpointError', ['truncated.pth', 'truncated']),
    ('resnet_classifier.pth', 'CheckpointError', ['resnet_classifier.pth',
                                                  'is not a CLIP ViT checkpoint']),
    ('two_layers.pth', 'ValueError', ['avg_layers (1, 2)', 'of the 2 vision layers']),
    ('patch32.pth', 'ValueError', ['patch size 32', 'ResizeToPatchMultiple(patch_size=32)']),
], ids=['missing', 'truncated', 'not-clip', 'too-few-layers', 'other-patch-size'])
def test_tagging_checkpoint_errors(checkpoint, error, fragments, data, tmp_path,
                                   tiny_tool_options, tool_runner):
    with pytest.raises(Exception) as info:
        tag(tool_runner, data, tiny_tool_options, tmp_path,
            f'model.clip.checkpoint={data / checkpoint}', 'model.avg_layers=[1,2]')
    assert type(info.value).__name__ == error
    one_line_error(info, *fragments)
    assert not (tmp_path / 'tags.txt').exists()


@pytest.mark.parametrize('checkpoint, fragments', [
    ('missing.pth', ['CLIP checkpoint not found', 'missing.pth']),
    ('resnet_classifier.pth', ['is not a CLIP ViT checkpoint']),
    ('two_layers.pth', ['caa_layers (0, 1, 2)', 'of the 2 vision layers']),
], ids=['missing', 'not-clip', 'too-few-layers'])
def test_pseudo_label_checkpoint_errors(checkpoint, fragments, data, tmp_path, tiny_tool_options,
                                        tool_runner, pl_list_config):
    with pytest.raises(Exception) as info:
        label(tool_runner, data, tiny_tool_options, pl_list_config, tmp_path, GOOD_TAGS,
              flags=('--clip-checkpoint', str(data / checkpoint)))
    one_line_error(info, *fragments)
    assert not list((tmp_path / 'out').glob('*.png'))
