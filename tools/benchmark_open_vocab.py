"""Time and size one large image through an open-vocabulary benchmark config.

Runs one random image (default Cityscapes' 1024x2048) through the config's
``TagCLIPSegmentor`` as ``tools/test.py`` would: the config's resize, tags
once, slide inference, outputs at the original size. Prints the seconds and
the peak memory above the loaded model; the last line,
``PEAK_ABOVE_MODEL_MIB <n>``, is for scripts. The code is
``tools/benchmark/open_vocab.py``; figures in docs/open_vocab.md.

Examples::

    python tools/benchmark_open_vocab.py                      # CPU, ViT-B/16 shape
    python tools/benchmark_open_vocab.py --device cuda --clip-checkpoint ViT-B-16.pt
    python tools/benchmark_open_vocab.py --tiny --all-classes-as-tags   # seconds
"""
from benchmark.open_vocab import main

if __name__ == '__main__':
    main()
