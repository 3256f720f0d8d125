"""Every segmenter config loads, builds its model (shrunk) and its datasets (tiny tree)."""
import copy
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS, MODELS

import tagclip_mmseg  # noqa: F401
from tagclip_mmseg.testing.checkout import repo_root
from tagclip_mmseg.utils import iter_dicts

init_default_scope('mmseg')

REPO = repo_root(__file__)
CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', 'deeplab', '*.py')))
V2_VOC = osp.join(REPO, 'configs', 'deeplab',
                  'deeplabv2_r101-d8-msc_1xb5-accum2-20k_voc12aug-pseudo-321x321.py')
V2_COCO = osp.join(REPO, 'configs', 'deeplab',
                   'deeplabv2_r101-d8-msc_1xb10-100k_coco-object-pseudo-321x321.py')

#: ResNet-101 widths -> those of a ResNet-18 with base width 8 (BasicBlock:
#: stage i has 8 * 2**i channels), and hidden head widths -> tiny ones.
TINY_IN_CHANNELS = {2048: 64, 1024: 32, 512: 16, 256: 8}
TINY_HIDDEN = {512: 16, 256: 8, 48: 8}


def shrink_model(model_cfg: ConfigDict) -> ConfigDict:
    """The config's model with a tiny ResNet-18, BN instead of SyncBN, no weights."""
    cfg = copy.deepcopy(model_cfg)
    cfg.pretrained = None
    cfg.backbone.update(depth=18, stem_channels=8, base_channels=8, init_cfg=None,
                        pretrained=None)
    for d in iter_dicts(cfg):
        # docs/compatibility.md, "Traps": a bare MODELS.build keeps SyncBN
        if d.get('type') == 'SyncBN':
            d['type'] = 'BN'
        for key in ('in_channels', 'c1_in_channels'):
            if isinstance(d.get(key), int) and d is not cfg.backbone:
                d[key] = TINY_IN_CHANNELS.get(d[key], d[key])
        for key in ('channels', 'c1_channels'):
            if isinstance(d.get(key), int):
                d[key] = TINY_HIDDEN.get(d[key], d[key])
    return cfg


def tiny_dataset_cfg(dataset_cfg: ConfigDict, data: dict, train: bool) -> ConfigDict:
    """Point a config's dataset at the fabricated tree (VOC or COCO layout)."""
    cfg = copy.deepcopy(dataset_cfg)
    coco = 'COCO' in cfg.type
    cfg.data_root = data['coco_root' if coco else 'voc_root']
    if train:
        cfg.data_prefix.seg_map_path = data['coco_pseudo' if coco else 'voc_pseudo']
    return cfg


def load(path: str) -> Config:
    return Config.fromfile(path)


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_declares_plugin_and_scope(path):
    cfg = load(path)
    assert cfg.custom_imports == dict(imports=['tagclip_mmseg'], allow_failed_imports=False)
    assert cfg.default_scope == 'mmseg'
    train = cfg.train_dataloader.dataset
    assert osp.isabs(train.data_prefix.seg_map_path), 'pseudo labels must not join data_root'
    assert 'pseudo_labels' in train.data_prefix.seg_map_path
    assert train.reduce_zero_label is False
    assert cfg.val_evaluator.type == 'IoUMetric'
    num_classes = 81 if 'coco' in osp.basename(path) else 21
    assert cfg.model.decode_head.num_classes == num_classes


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_builds_shrunk_model(path):
    cfg = load(path)
    torch.manual_seed(0)
    model = MODELS.build(shrink_model(cfg.model)).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64), mode='tensor')
    assert logits.shape[:2] == (1, cfg.model.decode_head.num_classes)


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_builds_datasets(path, tiny_pseudo_seg_data):
    cfg = load(path)
    ids = tiny_pseudo_seg_data['ids']
    train = DATASETS.build(tiny_dataset_cfg(cfg.train_dataloader.dataset, tiny_pseudo_seg_data,
                                            train=True))
    val = DATASETS.build(tiny_dataset_cfg(cfg.val_dataloader.dataset, tiny_pseudo_seg_data,
                                          train=False))
    assert len(train) == len(val) == len(ids)
    assert train[0]['data_samples'].seg_map_path.startswith(
        tiny_pseudo_seg_data['coco_pseudo' if 'coco' in path else 'voc_pseudo'])
    crop = cfg.crop_size
    for i in range(len(ids)):
        sample = train[i]
        h, w = sample['inputs'].shape[1:]
        assert h <= crop[0] and w <= crop[1]
        gt = sample['data_samples'].gt_sem_seg.data
        assert gt.shape[1:] == (h, w)
        assert set(gt.unique().tolist()) <= set(range(81)) | {255}
    sample = val[0]
    assert 'gt_sem_seg' in sample['data_samples']


@pytest.mark.parametrize('path', [V2_VOC, V2_COCO], ids=osp.basename)
def test_deeplabv2_configs_follow_the_protocol(path):
    """The table (VOC) and 'common setting' (COCO) of docs/method.md.

    Both are in "Stage 3: training DeepLab-v2 on pseudo masks (CLIP-ES protocol)".
    """
    cfg = load(path)
    model = cfg.model
    assert model.type == 'MultiScaleEncoderDecoder' and tuple(model.scales) == (1.0, 0.5, 0.75)
    assert model.backbone.depth == 101
    assert tuple(model.backbone.dilations) == (1, 1, 2, 4)
    assert tuple(model.backbone.strides) == (1, 2, 1, 1)
    assert model.backbone.norm_eval is True and model.backbone.norm_cfg.requires_grad is False
    assert model.backbone.init_cfg.type == 'Pretrained'
    assert model.backbone.init_cfg.checkpoint == cfg.backbone_checkpoint
    assert model.decode_head.type == 'DeepLabV2Head'
    assert tuple(model.decode_head.dilations) == (6, 12, 18, 24)
    assert model.decode_head.ignore_index == 255
    assert model.decode_head.loss_decode.avg_non_ignore is True
    pre = model.data_preprocessor
    assert pre.mean == [104.008, 116.669, 122.675] and pre.std == [1.0, 1.0, 1.0]
    assert pre.bgr_to_rgb is False and tuple(pre.size) == (321, 321)
    assert pre.pad_val == 0 and pre.seg_pad_val == 255
    assert cfg.optim_wrapper.optimizer == dict(type='SGD', lr=2e-4, momentum=0.9,
                                               weight_decay=5e-4)
    (poly, ) = cfg.param_scheduler
    assert poly.type == 'PolyLR' and poly.power == 0.9 and poly.eta_min == 0
    accumulate = cfg.optim_wrapper.accumulative_counts
    batch = cfg.train_dataloader.batch_size
    updates = 20000 if 'voc' in osp.basename(path) else 100000
    assert batch * accumulate == 10
    assert cfg.train_cfg.max_iters == poly.end == updates * accumulate
    pipeline = {t.type: t for t in cfg.train_dataloader.dataset.pipeline}
    scales = [sub[0].scale_factor for sub in pipeline['RandomChoice'].transforms]
    assert scales == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert tuple(pipeline['RandomCrop'].crop_size) == (321, 321)
    assert pipeline['RandomFlip'].prob == 0.5


def test_deeplabv2_lr_multipliers():
    """Backbone 1x; ASPP weights 10x; ASPP biases 20x without weight decay."""
    cfg = load(V2_VOC)
    model = MODELS.build(shrink_model(cfg.model))
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    groups = {id(p): g for g in wrapper.optimizer.param_groups for p in g['params']}
    base_lr, base_wd = 2e-4, 5e-4
    head = model.decode_head
    for conv in head.aspp:
        assert groups[id(conv.weight)]['lr'] == pytest.approx(10 * base_lr)
        assert groups[id(conv.weight)]['weight_decay'] == pytest.approx(base_wd)
        assert groups[id(conv.bias)]['lr'] == pytest.approx(20 * base_lr)
        assert groups[id(conv.bias)]['weight_decay'] == 0
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    assert backbone_params and all(
        groups[id(p)]['lr'] == pytest.approx(base_lr) and
        groups[id(p)]['weight_decay'] == pytest.approx(base_wd) for p in backbone_params)
    frozen = [p for p in model.backbone.parameters() if not p.requires_grad]
    assert frozen and all(id(p) not in groups for p in frozen), 'frozen BN is not optimised'
    assert wrapper._accumulative_counts == 2


def tiny_training_cfg(path: str, data: dict, work_dir: str) -> Config:
    """The config with a shrunk model, 64x64 crops, two iterations, no validation.

    The crops come from the tiny tree; schedule, optimizer and loss stay.
    """
    cfg = load(path)
    cfg.model = shrink_model(cfg.model)
    cfg.model.data_preprocessor.size = (64, 64)
    train = tiny_dataset_cfg(cfg.train_dataloader.dataset, data, train=True)
    for t in iter_dicts(train.pipeline):
        if t.get('type') == 'RandomCrop':
            t['crop_size'] = (64, 64)
        elif t.get('type') == 'RandomResize':
            t['scale'] = (128, 64)
    cfg.train_dataloader.update(dataset=train, batch_size=2, num_workers=0,
                                persistent_workers=False)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=100)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                'test_evaluator'):
        cfg[key] = None
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=100)
    cfg.update(work_dir=work_dir, launcher='none', randomness=dict(seed=0),
               env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo')))
    return cfg


@pytest.mark.slow
@pytest.mark.classic
@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_trains_a_few_iterations(path, tiny_pseudo_seg_data, tmp_path):
    """Two iterations of each config's own training loop change the decode head.

    The config's optimizer, schedule and loss (gradient accumulation included) are used.
    """
    from mmengine.runner import Runner
    runner = Runner.from_cfg(tiny_training_cfg(path, tiny_pseudo_seg_data, str(tmp_path)))
    head = {k: v.detach().clone() for k, v in runner.model.decode_head.state_dict().items()}
    runner.train()
    assert runner.iter == 2
    changed = [k for k, v in runner.model.decode_head.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, head[k])]
    assert changed, 'two iterations did not update the decode head'
    losses = runner.message_hub.get_scalar('train/loss').data[0]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
