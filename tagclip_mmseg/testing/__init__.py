"""Test oracles and fixtures that ship with the package.

Nothing here runs in a model's forward: the per-image loop references
(``reference``) are independent re-statements of the method used to check the
vectorised models, and ``models`` builds the tagger and the
labeler in one line for tests and tools; ``slurm`` runs a one-node Slurm
cluster from a temporary folder for the tests of the Slurm scripts, and
``http_server`` serves checkpoints on the loopback for the fetch tests.
``checkout`` finds a test's repository root and the environment that makes a
tool it starts import that checkout; ``images`` writes random photos for tool
tests; ``skip_policy`` is the pytest plugin behind ``--strict-skips``.
"""
