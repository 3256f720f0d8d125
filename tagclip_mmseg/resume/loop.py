"""A test loop that hands the model only the images it must compute.

Samples restored from disk or whose image failed to load are filled by
:mod:`.restore`; the evaluator and the hooks still get every sample, in input
order, with the whole data batch, as ``TestLoop`` hands them over.
"""
from typing import Any, Dict, List, Sequence

import torch
from mmengine.model import is_model_wrapper
from mmengine.runner import TestLoop, autocast
from mmseg.registry import LOOPS

from .restore import COMPUTE, fill_prediction, sample_status

__all__ = [
    'TEST_ERROR_EVENT', 'ResumableTestLoop', 'predict_or_restore', 'select_samples',
    'require_resumable_loop'
]

#: Hook method ``ResumableTestLoop`` calls when a test run raises.
TEST_ERROR_EVENT = 'on_test_error'


def select_samples(data_batch: Dict[str, Any], indices: Sequence[int]) -> Dict[str, Any]:
    """The part of a collated batch that holds the samples at ``indices``.

    Per-sample lists (``pseudo_collate``) and stacked tensors (``default_collate``)
    are indexed; any other entry is kept as it is.
    """
    size = len(data_batch['data_samples'])
    part = {}
    for key, value in data_batch.items():
        if isinstance(value, (list, tuple)) and len(value) == size:
            part[key] = [value[i] for i in indices]
        elif isinstance(value, torch.Tensor) and value.dim() and len(value) == size:
            part[key] = value[list(indices)]
        else:
            part[key] = value
    return part


def predict_or_restore(model, data_batch: Dict[str, Any]) -> List[Any]:
    """``model.test_step`` for the samples to compute; the others restored.

    Args:
        model: The runner's model (a wrapper is fine).
        data_batch: A collated batch with ``data_samples``.

    Returns:
        One output per sample, in the order of ``data_batch['data_samples']``.
    """
    samples = data_batch.get('data_samples')
    if not samples:
        return model.test_step(data_batch)
    status = [sample_status(s) for s in samples]
    todo = [i for i, s in enumerate(status) if s == COMPUTE]
    if len(todo) == len(samples):
        return model.test_step(data_batch)
    core = model.module if is_model_wrapper(model) else model
    outputs = list(samples)
    for i, s in enumerate(status):
        if s != COMPUTE:
            fill_prediction(samples[i], core)
    if todo:
        computed = model.test_step(select_samples(data_batch, todo))
        if len(computed) != len(todo):
            raise RuntimeError(f'{type(core).__name__}.test_step returned {len(computed)} '
                               f'outputs for {len(todo)} samples')
        for i, output in zip(todo, computed):
            outputs[i] = output
    return outputs


@LOOPS.register_module()
class ResumableTestLoop(TestLoop):
    """``TestLoop`` whose model sees only the samples it must compute.

    Set it as ``test_cfg = dict(type='ResumableTestLoop')`` where pipelines may
    short-cut images (``SkipTagged``, ``SkipExisting``) or skip unreadable ones.
    A run that raises calls the hooks' :data:`TEST_ERROR_EVENT` before the
    error propagates (mmengine calls no hook then), so writers release their
    locks.
    """

    def run(self) -> dict:
        """Run ``TestLoop.run``; on an error call :data:`TEST_ERROR_EVENT`, then re-raise."""
        try:
            return super().run()
        except BaseException:
            self.runner.call_hook(TEST_ERROR_EVENT)
            raise

    @torch.no_grad()
    def run_iter(self, idx: int, data_batch: Dict[str, Any]) -> None:
        """Predict or restore one batch; evaluate it and call the hooks."""
        self.runner.call_hook('before_test_iter', batch_idx=idx, data_batch=data_batch)
        with autocast(enabled=self.fp16):
            outputs = predict_or_restore(self.runner.model, data_batch)
        self.evaluator.process(data_samples=outputs, data_batch=data_batch)
        self.runner.call_hook('after_test_iter', batch_idx=idx, data_batch=data_batch,
                              outputs=outputs)


def require_resumable_loop(runner, transform: str) -> None:
    """Refuse a run whose pipeline short-cuts images but whose loop would compute them.

    Under a plain ``TestLoop`` the model would predict on ``transform``'s
    black placeholder instead of the output restored from disk.

    Raises:
        ValueError: Naming the loop to set.
    """
    loop = runner.test_loop
    if not isinstance(loop, ResumableTestLoop):
        raise ValueError(f'{transform} is in the test pipeline but the test loop is '
                         f'{type(loop).__name__}, which would run the model on its placeholder '
                         "images: set test_cfg = dict(type='ResumableTestLoop') (see "
                         'configs/_base_/default_runtime_training_free.py)')
