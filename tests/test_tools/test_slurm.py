"""tools/slurm_test.sh and tools/slurm_train.sh, run for real on a one-node Slurm cluster.

The cluster (munged, slurmctld, slurmd; this machine, 2 CPUs, 127.0.0.1 only)
is started by a fixture from a temporary folder and always stopped again
(``tagclip_mmseg.testing.slurm``). Each stage runs as 2 srun tasks with gloo
on the CPU, and is compared with a single-process run under the determinism
contract (docs/determinism.md). CI installs Slurm (``.ci/run``); without it
these tests skip, which ``--strict-skips`` turns into a failure.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
from mmengine.config import Config

from tagclip_mmseg.testing.checkout import repo_root, tool_env
from tagclip_mmseg.testing.slurm import LocalSlurm
from tagclip_mmseg.utils.dist import export_slurm_environment

REPO = repo_root(__file__)
PARTITION = 'tagclip'
NUM_IMAGES = 8
TAG_CONFIG = 'configs/tagclip/tagclip_vit-b16_folder.py'
TAG_FILES = ('tags.txt', 'scores.jsonl', 'tags.skipped.txt')
#: The environment of every script run: 2 tasks of 1 CPU on a node without GPUs.
SCRIPT_ENV = dict(GPUS='2', GPUS_PER_NODE='2', CPUS_PER_TASK='1', GRES='',
                  SRUN_ARGS='--time=15', PYTHON=sys.executable, CUDA_VISIBLE_DEVICES='',
                  OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


# ------------------------------------------------------------ srun's environment
def test_slurm_environment_becomes_torch_rendezvous(monkeypatch, tmp_path):
    """RANK/WORLD_SIZE/LOCAL_RANK from srun's variables.

    MASTER_ADDR is the first node of the job (from ``scontrol show hostnames``) unless set.
    """
    fake = tmp_path / 'scontrol'
    fake.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] && '
                    'printf "gpu07\\ngpu08\\n"\n')
    fake.chmod(0o755)
    monkeypatch.setenv('PATH', f'{tmp_path}{os.pathsep}{os.environ["PATH"]}')
    for key in ('MASTER_ADDR', 'MASTER_PORT', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        monkeypatch.setenv(key, 'x')  # so that monkeypatch restores what the function sets
        monkeypatch.delenv(key)
    monkeypatch.setenv('SLURM_PROCID', '3')
    monkeypatch.setenv('SLURM_NTASKS', '4')
    monkeypatch.setenv('SLURM_LOCALID', '1')
    monkeypatch.setenv('SLURM_NODELIST', 'gpu[07-08]')
    monkeypatch.setenv('MASTER_PORT', '23456')
    export_slurm_environment()
    assert {k: os.environ[k] for k in ('MASTER_ADDR', 'MASTER_PORT', 'RANK', 'WORLD_SIZE',
                                       'LOCAL_RANK')} == dict(
        MASTER_ADDR='gpu07', MASTER_PORT='23456', RANK='3', WORLD_SIZE='4', LOCAL_RANK='1')
    monkeypatch.setenv('MASTER_ADDR', '10.1.2.3')
    monkeypatch.delenv('MASTER_PORT')
    export_slurm_environment()
    assert (os.environ['MASTER_ADDR'], os.environ['MASTER_PORT']) == ('10.1.2.3', '29500')
    monkeypatch.delenv('SLURM_PROCID')
    with pytest.raises(RuntimeError, match=r'SLURM_PROCID.*srun'):
        export_slurm_environment()


def test_slurm_scripts_refuse_a_checkpoint_for_the_pseudo_label_tool(tmp_path):
    proc = subprocess.run(
        ['bash', osp.join(REPO, 'tools', 'slurm_test.sh'), 'p', 'job', 'cfg.py', 'ckpt.pth'],
        env=tool_env(REPO, TOOL='generate_pseudo_labels.py', PATH='/usr/bin:/bin'),
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "takes no checkpoint: pass 'none'" in proc.stderr


# ------------------------------------------------------------ the real cluster
@pytest.fixture(scope='module')
def slurm_cluster(request, tmp_path_factory):
    """A running one-node cluster (partition ``tagclip``), stopped after the module."""
    missing = LocalSlurm.missing_binaries()
    if missing:
        pytest.skip(f'Slurm is not installed ({", ".join(missing)} missing); '
                    'apt-get install slurm-wlm munge')
    cluster = LocalSlurm(str(tmp_path_factory.mktemp('slurm')), cpus=2, partition=PARTITION)
    request.addfinalizer(cluster.stop)
    cluster.start(timeout=120)
    return cluster


def run_script(cluster: LocalSlurm, script: str, job: str, *args: str, **env: str) -> str:
    """``bash tools/<script> tagclip <job> args`` with :data:`SCRIPT_ENV`; its output."""
    full_env = {k: v for k, v in cluster.env().items()
                if k not in ('LOCAL_RANK', 'RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')}
    full_env = tool_env(REPO, base=full_env, **{**SCRIPT_ENV, **env})
    proc = subprocess.run(['bash', osp.join('tools', script), PARTITION, job, *args], cwd=REPO,
                          env=full_env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    # shown with -rP: the srun command line and the tasks' log lines
    print(f'==== {script} {job} (rc={proc.returncode})\n{output}')
    assert proc.returncode == 0, output[-6000:] + '\n' + cluster.logs()
    return output


@pytest.fixture(scope='module')
def images(tmp_path_factory, random_split):
    """``NUM_IMAGES`` small photos of mixed sizes, a split list and a tags file."""
    return random_split(tmp_path_factory.mktemp('slurm_images'),
                        [f'img{i:02d}' for i in range(NUM_IMAGES)], seed=3, max_side=80,
                        min_tags=1)


def tag_args(images, out, tiny_tool_options):
    return [
        '--work-dir', str(out / 'work_dir'), '--cfg-options', *tiny_tool_options['tag'],
        f'test_dataloader.dataset.data_root={images / "JPEGImages"}',
        f'test_evaluator.0.out_file={out / "tags.txt"}',
        f'test_evaluator.0.scores_file={out / "scores.jsonl"}'
    ]


def pl_args(images, out, tiny_tool_options):
    return [
        '--out', str(out), '--tags', str(images / 'tags.txt'), '--cfg-options',
        *tiny_tool_options['pl'], f'test_dataloader.dataset.data_root={images}',
        'test_dataloader.dataset.ann_file=list.txt'
    ]


def files(folder, names=None) -> dict:
    names = names or sorted(n for n in os.listdir(folder) if n.endswith('.png'))
    return {name: (folder / name).read_bytes() for name in names}


@pytest.mark.slow
@pytest.mark.slurm
def test_tagging_with_two_srun_tasks_equals_one_process(slurm_cluster, images, tmp_path,
                                                        tiny_tool_options, tool_runner,
                                                        tag_files_agree):
    reference, out = tmp_path / 'reference', tmp_path / 'slurm'
    tool_runner.inprocess('tools/test.py', TAG_CONFIG,
                          *tag_args(images, reference, tiny_tool_options))
    log = run_script(slurm_cluster, 'slurm_test.sh', 'tagclip-tag', TAG_CONFIG, 'none',
                     *tag_args(images, out, tiny_tool_options))
    assert 'srun -p tagclip' in log and '--launcher=slurm' in log and '--gres' not in log
    assert 'tagging:' in log or 'tagged' in log
    # every rank reads the (absent) journals before any rank writes one
    assert 'resuming' not in log
    tag_files_agree(files(out, TAG_FILES), files(reference, TAG_FILES),
                    Config.fromfile(TAG_CONFIG).model.tag_ratio)
    assert len((out / 'tags.txt').read_text().splitlines()) == NUM_IMAGES


@pytest.mark.slow
@pytest.mark.slurm
def test_pseudo_labels_with_two_srun_tasks_equal_one_process(slurm_cluster, images, tmp_path,
                                                             tiny_tool_options, tool_runner,
                                                             pl_list_config, masks_agree):
    reference, out = tmp_path / 'reference', tmp_path / 'slurm'
    tool_runner.inprocess('tools/generate_pseudo_labels.py', pl_list_config,
                          *pl_args(images, reference, tiny_tool_options))
    run_script(slurm_cluster, 'slurm_test.sh', 'tagclip-pl', pl_list_config, 'none',
               *pl_args(images, out, tiny_tool_options), TOOL='generate_pseudo_labels.py')
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['written'], summary['skipped'], summary['failed']) == (NUM_IMAGES, 0, 0)
    assert len(files(out)) == NUM_IMAGES
    masks_agree(files(out), files(reference))


@pytest.mark.slow
@pytest.mark.slurm
def test_training_with_two_srun_tasks_is_distributed(slurm_cluster, rank_weights_config, tmp_path,
                                                     ranks_trained_alike):
    config, hook_path = rank_weights_config
    work_dir = tmp_path / 'work'
    log = run_script(
        slurm_cluster, 'slurm_train.sh', 'tagclip-train', config, '--work-dir', str(work_dir),
        '--cfg-options', 'train_cfg.max_iters=2', 'train_cfg.val_interval=10',
        'train_dataloader.batch_size=1',
        PYTHONPATH=os.pathsep.join([hook_path, os.environ.get('PYTHONPATH', '')]))
    assert "dist_cfg: {'backend': 'gloo'}" in log and 'Distributed launcher: slurm' in log
    ranks_trained_alike(work_dir)
    assert osp.isfile(work_dir / 'iter_2.pth')
