"""Fixtures of the model tests: a spy on the precision of the compared values."""
import pytest


class PrecisionSpy:
    """Records the dtypes of each spied call's float tensor arguments and autocast.

    Whether CPU autocast was on is kept too: the mixed-precision tests check where values are
    compared, not only the output's dtype.
    """

    def __init__(self, monkeypatch) -> None:
        self.monkeypatch = monkeypatch
        self.calls = []

    def record(self, name, args) -> None:
        import torch
        dtypes = tuple(a.dtype for a in args
                       if isinstance(a, torch.Tensor) and a.is_floating_point())
        self.calls.append((name, dtypes, torch.is_autocast_enabled('cpu')))

    def wrap(self, owner, name: str) -> None:
        """Spy on ``owner.name`` (a module's function or a class's method)."""
        fn = getattr(owner, name)

        def spy(*args, **kwargs):
            self.record(name, args)
            return fn(*args, **kwargs)

        self.monkeypatch.setattr(owner, name, spy)

    def softmax_over(self, size: int) -> None:
        """Spy on ``Tensor.softmax`` of tensors whose last dim is ``size``.

        That is the class axis; attention maps have the token count there.
        """
        import torch
        softmax = torch.Tensor.softmax

        def spy(t, *args, **kwargs):
            if t.shape[-1] == size:
                self.record('softmax', (t, ))
            return softmax(t, *args, **kwargs)

        self.monkeypatch.setattr(torch.Tensor, 'softmax', spy)

    def assert_fp32(self, names) -> None:
        """Each of ``names`` was called, and every call saw fp32 inputs with autocast off."""
        import torch
        assert {c[0] for c in self.calls} >= set(names), self.calls
        bad = [c for c in self.calls if c[2] or any(d != torch.float32 for d in c[1])]
        assert not bad, bad


@pytest.fixture
def precision_spy(monkeypatch):
    """A :class:`PrecisionSpy`; its spies are undone after the test."""
    return PrecisionSpy(monkeypatch)
