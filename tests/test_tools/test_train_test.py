"""tools/train.py, tools/test.py and the resume fix, end to end on a tiny VOC tree.

The DeepLab-v2 VOC config is inherited by a tiny derived config
(``tiny_config`` in ``tests/test_tools/conftest.py``).
"""
import importlib.util
import math
import os
import os.path as osp
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import CheckpointLoader
from PIL import Image

from tagclip_mmseg.engine.checkpoint_compat import (load_from_local_weights_only,
                                                    safe_checkpoint_loading)
from tagclip_mmseg.testing.checkout import repo_root, tool_env

REPO = repo_root(__file__)


def run_tool(script: str, *args: str) -> str:
    """Run tools/<script> in a fresh interpreter, on the CPU; return its output."""
    env = tool_env(REPO, base={k: v for k, v in os.environ.items()
                               if k != 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'})
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', script), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{script} failed:\n{output[-6000:]}'
    return output


def import_tool(name: str):
    """tools/<name>.py as a module (the tools folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f'tools_{name}', osp.join(REPO, 'tools',
                                                                             f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_losses(log: str) -> list:
    return [float(v) for v in re.findall(r'\bloss: (\S+)', log)]


@pytest.mark.classic
@pytest.mark.slow
def test_train_resume_and_test_end_to_end(tiny_config, tmp_path):
    work_dir = str(tmp_path / 'work')

    # 1. two iterations (one accumulated SGD update), checkpoint at iter 2
    log = run_tool('train.py', tiny_config, '--work-dir', work_dir, '--cfg-options',
                   'train_cfg.max_iters=2')
    first = torch.load(osp.join(work_dir, 'iter_2.pth'), map_location='cpu',
                       weights_only=False)
    assert first['meta']['iter'] == 2
    assert train_losses(log) and all(math.isfinite(v) for v in train_losses(log))
    assert 'decode_s0.5.loss_ce' in log and 'decode_max.loss_ce' in log
    assert 'mIoU' in log  # validation on the real-mask split ran

    # 2. --resume continues at iteration 2 up to the config's 4. Under torch >= 2.6
    # this needs the allowlist of mmengine's checkpoint types (the environment
    # above does not set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD).
    log = run_tool('train.py', tiny_config, '--work-dir', work_dir, '--resume')
    assert 'resumed epoch: 0, iter: 2' in log
    last = torch.load(osp.join(work_dir, 'iter_4.pth'), map_location='cpu', weights_only=False)
    assert last['meta']['iter'] == 4
    assert all(math.isfinite(v) for v in train_losses(log))
    changed = [k for k, v in last['state_dict'].items()
               if k.startswith('decode_head') and not torch.equal(v, first['state_dict'][k])]
    assert changed, 'the resumed run did not update the head'

    # 3. test with the checkpoint reports mIoU
    log = run_tool('test.py', tiny_config, osp.join(work_dir, 'iter_4.pth'), '--work-dir',
                   str(tmp_path / 'test'))
    assert re.search(r'mIoU: \d', log)


@pytest.mark.classic
def test_training_checkpoints_load_weights_only_with_the_mmengine_allowlist(tmp_path):
    """A training checkpoint is more than weights: it loads with an allowlist.

    Torch refuses it with weights_only=True (the default since torch 2.6), and the tools load it
    with weights_only=True plus an allowlist (docs/compatibility.md, "Traps": --resume under
    torch >= 2.6).
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer
    path = str(tmp_path / 'iter_2.pth')
    checkpoint = dict(meta=dict(iter=2, seed=np.int64(3)), state_dict={'w': torch.ones(2)},
                      message_hub=dict(log_scalars={'train/loss': HistoryBuffer(
                          np.array([1.5, 0.25]), np.array([1, 1]))},
                          runtime_info={'lr': np.float64(0.01)}))
    torch.save(checkpoint, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location='cpu', weights_only=True)  # mmengine 0.10.7 on torch 2.6+
    default_loader = CheckpointLoader._get_checkpoint_loader(path)
    assert default_loader is not load_from_local_weights_only  # import changed nothing
    with safe_checkpoint_loading():
        assert CheckpointLoader._get_checkpoint_loader(path) is load_from_local_weights_only
        assert CheckpointLoader._get_checkpoint_loader('http://x/y.pth') is not \
            load_from_local_weights_only
        loaded = CheckpointLoader.load_checkpoint(path, map_location='cpu')
        with pytest.raises(FileNotFoundError, match='can not be found'):
            CheckpointLoader.load_checkpoint(str(tmp_path / 'missing.pth'))
    assert loaded['meta']['iter'] == 2 and loaded['meta']['seed'] == 3
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer) and buffer.mean() == pytest.approx(0.875)
    # Restored on exit: nothing outlives the block.
    assert CheckpointLoader._get_checkpoint_loader(path) is default_loader
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location='cpu', weights_only=True)


@pytest.mark.classic
def test_importing_the_package_changes_no_checkpoint_loader():
    # torch adds its own types to the allowlist on lazy imports, so the check
    # is that nothing a checkpoint of this project needs got allowlisted.
    code = ('import numpy, torch\n'
            'from mmengine.logging import HistoryBuffer\n'
            'from mmengine.runner import CheckpointLoader\n'
            'before = dict(CheckpointLoader._schemes)\n'
            'import tagclip_mmseg, tagclip_mmseg.apis\n'
            'assert dict(CheckpointLoader._schemes) == before, "loader registry changed"\n'
            'names = {getattr(g[0] if isinstance(g, tuple) else g, "__module__", "")\n'
            '         for g in getattr(torch.serialization, "get_safe_globals", list)()}\n'
            'assert not [n for n in names if n.startswith(("tagclip", "mmengine", "numpy",\n'
            '                                              "builtins"))], names\n'
            'print("UNCHANGED")\n')
    env = tool_env(REPO, base={k: v for k, v in os.environ.items()
                               if k != 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'})
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and 'UNCHANGED' in proc.stdout, proc.stdout + proc.stderr


class OpenMarker:
    """Unpickling this calls ``open(marker, 'w')``: code run from a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def write_malicious_checkpoint(path, marker, state_dict=None) -> str:
    """An mmengine-looking checkpoint whose pickle creates ``marker`` when loaded."""
    torch.save(dict(meta=dict(iter=2), state_dict=state_dict or {'w': torch.ones(1)},
                    message_hub=OpenMarker(str(marker))), path)
    return str(path)


class CallsSystem:
    """Unpickling this calls ``os.system('touch <marker>')``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def bad_checkpoints(tmp_path, marker) -> dict:
    """``name -> (path, error type name, fragments its message must hold)``."""
    evil = write_malicious_checkpoint(tmp_path / 'evil.pth', marker)
    system = str(tmp_path / 'system.pth')
    torch.save(dict(meta=dict(iter=2), state_dict={'w': torch.ones(1)},
                    message_hub=CallsSystem(str(marker))), system)
    jpeg = str(tmp_path / 'photo.pth')
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(jpeg, format='JPEG')
    truncated = str(tmp_path / 'truncated.pth')
    torch.save({'w': torch.ones(1000)}, truncated)
    with open(truncated, 'r+b') as f:
        f.truncate(os.path.getsize(truncated) // 2)
    refused = ('could run code', 'Nothing from it was executed', 'asks to call')
    return {
        'calls open': (evil, 'UnsafeCheckpointError', refused + ('open', )),
        'calls os.system': (system, 'UnsafeCheckpointError',
                            refused + (f'{os.system.__module__}.system', )),
        'a JPEG': (jpeg, 'UnreadableCheckpointError', ('a JPEG image, not a checkpoint', )),
        'truncated': (truncated, 'UnreadableCheckpointError', ('truncated', )),
    }


@pytest.mark.classic
def test_bad_checkpoint_is_explained_and_never_runs_in_train_and_test(tmp_path, tiny_config,
                                                                      tool_runner):
    """tools/test.py and tools/train.py (--resume, load_from) refuse bad files.

    Each gets a file that calls a function, a JPEG and a truncated file.
    """
    from tagclip_mmseg import engine
    marker = tmp_path / 'code_ran'
    for kind, (path, error, fragments) in bad_checkpoints(tmp_path, marker).items():
        runs = {
            'test.py CHECKPOINT': ('tools/test.py', tiny_config, path),
            'train.py --resume': ('tools/train.py', tiny_config, '--resume', path),
            'train.py load_from': ('tools/train.py', tiny_config, '--cfg-options',
                                   f'load_from={path}'),
        }
        for name, (script, *args) in runs.items():
            with pytest.raises(getattr(engine, error)) as info:
                tool_runner.inprocess(script, *args, '--work-dir', str(tmp_path / 'work'))
            message = str(info.value)
            assert not marker.exists(), f'{name} ran code from the checkpoint'
            for fragment in (path, *fragments):
                assert fragment in message, (kind, name, fragment, message)
            assert 'weights_only=False' not in message, (kind, name, message)
            assert '`weights_only` set to `False`' not in message, (kind, name, message)


def test_test_tool_checkpoint_is_optional_and_out_needs_one_metric(tmp_path, monkeypatch,
                                                                  tiny_config):
    test_tool = import_tool('test')
    monkeypatch.setattr(sys, 'argv', ['test.py', tiny_config])
    args = test_tool.parse_args()
    assert args.checkpoint is None
    cfg = Config.fromfile(tiny_config)
    test_tool.set_output_dir(cfg, str(tmp_path / 'preds'))
    assert cfg.test_evaluator.output_dir == str(tmp_path / 'preds')
    assert cfg.test_evaluator.keep_results is True
    cfg.test_evaluator = [dict(type='IoUMetric'), dict(type='IoUMetric')]
    with pytest.raises(ValueError, match='single test_evaluator'):
        test_tool.set_output_dir(cfg, str(tmp_path / 'preds'))


def test_train_tool_resume_forms(tmp_path, monkeypatch, tiny_config):
    train_tool = import_tool('train')
    cfg = Config.fromfile(tiny_config)
    for argv, resume in ((['train.py', tiny_config, '--resume'], 'auto'),
                         (['train.py', tiny_config], None)):
        monkeypatch.setattr(sys, 'argv', argv)
        assert train_tool.parse_args().resume == resume
    train_tool.set_resume(cfg, 'auto')
    assert cfg.resume is True and cfg.load_from is None
    ckpt = tmp_path / 'iter_2.pth'
    ckpt.write_bytes(b'')
    train_tool.set_resume(cfg, str(ckpt))
    assert cfg.resume is True and cfg.load_from == str(ckpt)
    with pytest.raises(FileNotFoundError, match='--resume'):
        train_tool.set_resume(cfg, str(tmp_path / 'missing.pth'))
    train_tool.enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.accumulative_counts == 2


def test_run_pipeline_skips_finished_steps(tmp_path, capsys, tiny_config):
    pipeline = import_tool('run_pipeline')
    work = tmp_path / 'pipe'
    pseudo = work / 'pseudo_labels'
    argv = ['--work-dir', str(work), '--pseudo-config', 'PSEUDO.py', '--seg-config', tiny_config,
            '--dry-run']

    pipeline.main(argv)
    out = capsys.readouterr().out
    assert '[tags] output exists, skipped' in out  # no --tag-config: nothing to tag
    assert 'generate_pseudo_labels.py PSEUDO.py --out ' + str(pseudo) in out
    assert '--resume' in out and f'seg_map_path={pseudo}' in out
    assert osp.join(str(work), 'segmenter', 'iter_4.pth') in out  # the config's max_iters

    pseudo.mkdir()
    (pseudo / 'summary.json').write_text('{}')
    for img_id in ('b', 'a'):
        (pseudo / f'{img_id}.png').write_bytes(b'')
    assert pipeline.write_train_ids(str(pseudo), str(work / 'train_ids.txt')) == 2
    assert (work / 'train_ids.txt').read_text() == 'a\nb\n'
    seg = work / 'segmenter'
    seg.mkdir()
    (seg / 'iter_4.pth').write_bytes(b'')
    (seg / 'last_checkpoint').write_text(str(seg / 'iter_4.pth'))
    (work / 'metrics.json').write_text('{}')
    pipeline.main(argv)
    out = capsys.readouterr().out
    for step in ('tags', 'pseudo', 'train', 'eval'):
        assert f'[{step}] output exists, skipped' in out
    assert '+ ' not in out

    (work / 'metrics.json').unlink()
    with pytest.raises(RuntimeError, match="'eval' is not done"):
        pipeline.main(argv + ['--steps', 'tags'])


def test_run_pipeline_reads_newest_test_metrics(tmp_path):
    pipeline = import_tool('run_pipeline')
    for stamp, miou in (('20240101_000000', 1.0), ('20240102_000000', 2.0)):
        (tmp_path / stamp).mkdir()
        (tmp_path / stamp / f'{stamp}.json').write_text(f'{{"mIoU": {miou}}}')
    (tmp_path / '20240102_000000' / 'vis_data').mkdir()
    assert pipeline.newest_test_metrics(str(tmp_path)) == {'mIoU': 2.0}


@pytest.mark.slow
def test_run_pipeline_end_to_end_with_a_corrupt_image(tmp_path, tiny_pseudo_seg_data,
                                                      tiny_tool_options, pl_list_config,
                                                      tiny_config_writer):
    """Tags -> pseudo masks -> training -> mIoU on a folder with one corrupt photo.

    Stage 1 lists it as skipped, stage 2 skips it too, training never sees it.
    """
    import json
    import shutil
    voc = tmp_path / 'VOC2012'
    shutil.copytree(tiny_pseudo_seg_data['voc_root'], voc)
    (voc / 'JPEGImages' / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated')
    config = tiny_config_writer(tmp_path / 'tiny_deeplabv2.py', voc,
                                tiny_pseudo_seg_data['voc_pseudo'])
    work = tmp_path / 'pipeline'
    log = run_tool(
        'run_pipeline.py', '--work-dir', str(work),
        '--tag-config', osp.join(REPO, 'configs', 'tagclip', 'tagclip_vit-b16_folder.py'),
        '--pseudo-config', pl_list_config, '--seg-config', str(config),
        '--tag-options', *tiny_tool_options['tag'],
        f'test_dataloader.dataset.data_root={voc / "JPEGImages"}',
        f'test_evaluator.0.scores_file={work / "scores.jsonl"}',
        '--pseudo-options', *tiny_tool_options['pl'], f'test_dataloader.dataset.data_root={voc}')
    ids = tiny_pseudo_seg_data['ids']
    assert (work / 'tags.skipped.txt').read_text().startswith('corrupt\t')
    assert sorted(p.stem for p in (work / 'pseudo_labels').glob('*.png')) == sorted(ids)
    summary = json.loads((work / 'pseudo_labels' / 'summary.json').read_text())
    assert summary['failed'] == 1 and summary['failed_images'][0]['img_id'] == 'corrupt'
    assert (work / 'train_ids.txt').read_text().split() == sorted(ids)
    assert 'mIoU' in json.loads((work / 'metrics.json').read_text())
    assert 'skipped by the tagger' in log


@pytest.mark.classic
def test_downloaded_checkpoints_load_weights_only_too(tmp_path):
    """Remote ``load_from`` / ``init_cfg`` URLs end in mmengine's ``load_url``.

    That covers http, open-mmlab://, ...; inside the tools' block it refuses a pickle that would run
    code, and still loads weights. ``file://`` stands in for a server: ``torch.hub`` downloads it
    the same way.
    """
    from mmengine.runner import checkpoint as mmengine_checkpoint

    from tagclip_mmseg.engine.checkpoint_compat import (UnsafeCheckpointError,
                                                        safe_checkpoint_loading)
    marker = tmp_path / 'code_ran'
    evil = write_malicious_checkpoint(str(tmp_path / 'evil.pth'), marker)
    good = str(tmp_path / 'good.pth')
    torch.save({'w': torch.arange(3.)}, good)
    with safe_checkpoint_loading():
        with pytest.raises(UnsafeCheckpointError, match='Nothing from it was executed'):
            mmengine_checkpoint.load_from_http('file://' + evil,
                                               model_dir=str(tmp_path / 'hub'))
        loaded = mmengine_checkpoint.load_from_http('file://' + good,
                                                    model_dir=str(tmp_path / 'hub'))
    assert not marker.exists()
    assert torch.equal(loaded['w'], torch.arange(3.))
    assert mmengine_checkpoint.load_url is not None
    from mmengine.utils.dl_utils import load_url
    assert mmengine_checkpoint.load_url is load_url  # restored on exit


def test_run_pipeline_passes_name_files_to_tags_and_pseudo_steps(tmp_path, capsys, tiny_config):
    pipeline = import_tool('run_pipeline')
    names = tmp_path / 'cls_ade847.txt'
    names.write_text('wall\nbuilding, edifice')
    pipeline.main(['--work-dir', str(tmp_path / 'pipe'), '--tag-config',
                   'configs/tagclip/tagclip_vit-b16_folder.py', '--pseudo-config', 'PSEUDO.py',
                   '--seg-config', tiny_config, '--dry-run', '--classes', str(names),
                   '--classes-sep', '; ', '--background-line'])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('+ ')]
    flags = f"--classes {names} --classes-sep '; ' --background-line"
    assert flags in lines[0] and 'test.py' in lines[0]
    assert flags in lines[1] and 'generate_pseudo_labels.py' in lines[1]
    assert '--classes' not in lines[2]  # training never reads names


# ------------------------------------------------ several processes on the CPU
@pytest.mark.slow
def test_cpu_training_under_torchrun_is_distributed(rank_weights_config, tmp_path,
                                                    ranks_trained_alike):
    """torchrun, 2 CPU processes.

    Gloo, DDP without device ids, both ranks train alike (docs/compatibility.md,
    "Traps": launchers on a machine without a GPU).
    """
    import socket
    config, hook_path = rank_weights_config
    work_dir = tmp_path / 'work'
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    env = tool_env(REPO, base={k: v for k, v in os.environ.items() if k not in ('RANK',
                                                                             'WORLD_SIZE')})
    env['PYTHONPATH'] = os.pathsep.join([hook_path, env['PYTHONPATH']])
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
         '--master_addr', '127.0.0.1', '--master_port', str(port),
         osp.join(REPO, 'tools', 'train.py'), config, '--launcher', 'pytorch', '--work-dir',
         str(work_dir), '--cfg-options', 'train_cfg.max_iters=2', 'train_cfg.val_interval=10',
         'train_dataloader.batch_size=1'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    ranks_trained_alike(work_dir)
    # the config inherits mmseg's nccl, which needs CUDA: gloo takes its place
    assert "dist_cfg: {'backend': 'gloo'}" in log and 'Distributed training: True' in log
    assert train_losses(log) and all(math.isfinite(v) for v in train_losses(log))


def test_setup_distributed_picks_the_backend_and_a_cpu_ddp(monkeypatch, tmp_path):
    """Without CUDA: gloo, launcher kept, no DDP device ids, SyncBN -> BN.

    Gloo is started here and the launcher kept, so the Runner wraps DDP. With CUDA: nccl, left to
    mmengine.
    """
    import socket

    import torch.distributed as dist
    train = import_tool('train')

    def config(**extra):
        return Config(dict(launcher='pytorch', env_cfg=dict(cudnn_benchmark=False),
                           model=dict(type='EncoderDecoder',
                                      backbone=dict(norm_cfg=dict(type='SyncBN'))), **extra))

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = config()
    train.setup_distributed(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'nccl' and 'model_wrapper_cfg' not in cfg
    assert cfg.model.backbone.norm_cfg.type == 'SyncBN' and not dist.is_initialized()

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    for key, value in dict(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK='0',
                           WORLD_SIZE='1', LOCAL_RANK='0').items():
        monkeypatch.setenv(key, value)
    cfg = config(model_wrapper_cfg=dict(type='MMDistributedDataParallel',
                                        find_unused_parameters=True))
    cfg.env_cfg.dist_cfg = dict(backend='nccl')  # mmseg's default runtime
    try:
        train.setup_distributed(cfg)
        assert dist.is_initialized() and dist.get_backend() == 'gloo'
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert cfg.launcher == 'pytorch' and cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel',
                                         find_unused_parameters=True, device_ids=None)
    assert cfg.model.backbone.norm_cfg.type == 'BN'
