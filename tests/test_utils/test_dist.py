"""Process-group life of the tools: started by ``init_cpu_distributed``, ended together."""
import glob
import os.path as osp

import torch.distributed as dist

from tagclip_mmseg.testing.checkout import repo_root
from tagclip_mmseg.utils import shutdown_distributed

REPO = repo_root(__file__)


def test_shutdown_distributed_destroys_the_group(tmp_path):
    assert not dist.is_initialized()
    assert shutdown_distributed() is False  # nothing to end
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0,
                            world_size=1)
    try:
        assert shutdown_distributed() is True
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_every_tool_that_starts_a_group_ends_it():
    """A rank left to the interpreter's teardown can abort after its outputs exist.

    (torch 2.13, gloo: ``terminate called without an active exception``; srun
    then fails the job.) The tools are found from their source, not listed.
    """
    starters = {}
    for path in sorted(glob.glob(osp.join(REPO, 'tools', '*.py'))):
        with open(path, encoding='utf-8') as f:
            source = f.read()
        if 'init_cpu_distributed(' in source:
            starters[osp.basename(path)] = 'shutdown_distributed()' in source
    assert {'test.py', 'train.py', 'generate_pseudo_labels.py'} <= set(starters)
    assert [name for name, ends in starters.items() if not ends] == []
