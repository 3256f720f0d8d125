"""The benchmark of the fast TagCLIP / CLIP-ES paths, one module per measured part.

``tools/benchmark.py`` runs :func:`cli.main`; ``tools/benchmark_open_vocab.py``
runs :func:`open_vocab.main`. The figures are in docs/performance.md.
"""
