"""Fixtures of the tool tests: a tiny DeepLab-v2 config and its multi-rank checks."""
import os.path as osp

import pytest

from tagclip_mmseg.testing.checkout import repo_root

REPO_ROOT = repo_root(__file__)

#: The DeepLab-v2 VOC config that :func:`tiny_config` shrinks.
V2_VOC = osp.join(REPO_ROOT, 'configs', 'deeplab',
                  'deeplabv2_r101-d8-msc_1xb5-accum2-20k_voc12aug-pseudo-321x321.py')

#: A tiny derived config: ResNet-18 at 1/8 width, 64x64 crops, a few iterations; everything
#: else (MSC segmentor, ASPP-v2 head, frozen BN, gradient accumulation, pseudo-label dataset,
#: IoU metric) is the real config.
TINY_CONFIG = """
_base_ = [{base!r}]
data_root = {data_root!r}
crop_size = (64, 64)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(depth=18, stem_channels=8, base_channels=8, init_cfg=None),
    decode_head=dict(in_channels=64))
train_pipeline = [
    dict(t, crop_size=crop_size) if t['type'] == 'RandomCrop' else t
    for t in _base_.train_pipeline
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, data_prefix=dict(seg_map_path={pseudo!r}),
                 pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
# Poly decay over 8 iterations: the rate stays > 0 for the updates at iterations 2 and 4.
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=8, by_epoch=False)]
train_cfg = dict(max_iters=4, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, max_keep_ckpts=-1))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
"""


def write_tiny_config(path, data_root: str, pseudo: str) -> str:
    """Write :data:`TINY_CONFIG` for a VOC tree and a pseudo-mask folder to ``path``."""
    with open(path, 'w') as f:
        f.write(TINY_CONFIG.format(base=V2_VOC, data_root=str(data_root), pseudo=str(pseudo)))
    return str(path)


@pytest.fixture(scope='session')
def tiny_config_writer():
    """:func:`write_tiny_config` (conftest cannot be imported)."""
    return write_tiny_config


@pytest.fixture
def tiny_config(tmp_path, tiny_pseudo_seg_data) -> str:
    """:data:`TINY_CONFIG` on :func:`tiny_pseudo_seg_data`'s VOC tree, written to ``tmp_path``."""
    return write_tiny_config(tmp_path / 'tiny_deeplabv2.py', tiny_pseudo_seg_data['voc_root'],
                             tiny_pseudo_seg_data['voc_pseudo'])


RANK_WEIGHTS_HOOK = """
import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS


@HOOKS.register_module()
class SaveRankWeightsHook(Hook):
    \"\"\"Each rank saves its parameters before and after training, and how it was wrapped.\"\"\"

    def before_train(self, runner):
        self.initial = self.weights(runner)

    def after_train(self, runner):
        torch.save(dict(wrapper=type(runner.model).__name__, world_size=get_world_size(),
                        initial=self.initial, final=self.weights(runner)),
                   f'{runner.work_dir}/rank{get_rank()}_weights.pth')

    @staticmethod
    def weights(runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        # parameters only: BN running statistics are per rank by design
        return {k: v.detach().cpu().clone() for k, v in model.named_parameters()}
"""


def assert_ranks_trained_alike(work_dir, world_size: int = 2) -> None:
    """Every rank of a :func:`rank_weights_config` run trained alike.

    Each was wrapped in DDP, ended with the same weights as rank 0, and changed the decode head.
    """
    import torch
    runs = [torch.load(osp.join(work_dir, f'rank{r}_weights.pth'), weights_only=True)
            for r in range(world_size)]
    for rank, run in enumerate(runs):
        assert (run['wrapper'], run['world_size']) == ('MMDistributedDataParallel', world_size)
        differ = [k for k, v in run['final'].items() if not torch.equal(v, runs[0]['final'][k])]
        assert not differ, f'rank {rank} ended with other weights than rank 0: {differ[:5]}'
    trained = [k for k, v in runs[0]['final'].items()
               if k.startswith('decode_head') and not torch.equal(v, runs[0]['initial'][k])]
    assert trained, 'no training step changed the decode head'


@pytest.fixture(scope='session')
def ranks_trained_alike():
    """:func:`assert_ranks_trained_alike` (conftest cannot be imported)."""
    return assert_ranks_trained_alike


@pytest.fixture
def rank_weights_config(tmp_path, tiny_config):
    """:func:`tiny_config` plus a hook that saves every rank's parameters.

    The hook saves the parameters before and after training (``initial``, ``final``), the model
    wrapper's class name (``wrapper``) and the world size to ``<work_dir>/rank<r>_weights.pth``.
    Returns ``(config, pythonpath)``: the hook's module is found through ``pythonpath``.
    """
    hook_dir = tmp_path / 'rank_hook'
    hook_dir.mkdir()
    (hook_dir / 'rank_weights_hook.py').write_text(RANK_WEIGHTS_HOOK)
    path = tmp_path / 'tiny_deeplabv2_rank_weights.py'
    path.write_text(f'_base_ = [{tiny_config!r}]\n'
                    "custom_imports = dict(imports=['tagclip_mmseg', 'rank_weights_hook'], "
                    'allow_failed_imports=False)\n'
                    "custom_hooks = [dict(type='SaveRankWeightsHook')]\n")
    return str(path), str(hook_dir)
