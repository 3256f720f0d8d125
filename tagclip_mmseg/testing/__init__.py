"""Test oracles and fixtures that ship with the package.

Nothing here runs in a model's forward: the per-image loop references are
independent re-statements of the method used to check the vectorised models,
and the random-CLIP factory builds small checkpoints for tests, benchmarks and
the install check (no pretrained weights can be downloaded in CI).
"""
