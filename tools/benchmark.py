r"""Time and size the fast (batched) paths against the faithful per-image ones.

Random CLIP weights (ViT-B/16-shaped, or tiny with ``--tiny``), so nothing is
downloaded; one line per figure, with PASS/MISS where ``benchmark/targets.py``
has a target. The parts live in ``tools/benchmark/``; docs/performance.md has
the figures.

Examples::

    python tools/benchmark.py --repeats 3       # the figures of docs/performance.md
    python tools/benchmark.py --device cuda --autocast bf16 --batch-size 32 \
        --parts backbone tag cam memory
    python tools/benchmark.py --tiny            # smoke run in seconds
"""
from benchmark.cli import main

if __name__ == '__main__':
    main()
