"""Installation script for ``tagclip_mmseg``.

``install_requires`` admits only the torch/torchvision minor versions the test
suite runs on (``requirements/constraints.txt`` pins the exact stack, see
``Makefile``): the code relies on APIs whose behaviour changed across torch
releases (batched ``autograd.grad``, SDPA, ``weights_only`` loading, CPU
autocast), so an untested torch is not admitted. mmcv 2.1.0 has no prebuilt
wheels for these torch versions; it is built from source (README, "GPU
clusters").
"""
import os.path as osp

from setuptools import find_packages, setup


def get_version() -> str:
    version_file = osp.join(osp.dirname(__file__), 'tagclip_mmseg', 'version.py')
    namespace: dict = {}
    with open(version_file, encoding='utf-8') as f:
        exec(compile(f.read(), version_file, 'exec'), namespace)
    return namespace['__version__']


def readme() -> str:
    with open(osp.join(osp.dirname(__file__), 'README.md'), encoding='utf-8') as f:
        return f.read()


setup(
    name='tagclip_mmseg',
    version=get_version(),
    description='Training-free open-vocabulary tagging (TagCLIP) and '
    'annotation-free segmentation as an OpenMMLab plugin',
    long_description=readme(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'demo', 'docs')),
    include_package_data=True,
    python_requires='>=3.8',
    install_requires=[
        'torch>=2.9,<2.10',
        'torchvision>=0.24,<0.25',
        'mmcv>=2.0.0,<2.2.0',
        'mmengine>=0.10,<1.0',
        'mmsegmentation>=1.2,<1.3',
        'mmpretrain>=1.2',
        'setuptools<81',
        'ftfy',
        'regex',
        'numpy',
        'opencv-python',
        'Pillow',
        'scipy',
        'safetensors',
        'filelock',
        'rich',
        'pycocotools',
    ],
    extras_require={
        # transformers < 4.40: later releases break `import mmpretrain.models`.
        'tests': [
            'pytest', 'pytest-timeout', 'scikit-learn', 'open_clip_torch', 'transformers<4.40',
            'pydensecrf2'
        ],
        'crf': ['pydensecrf2'],
    },
    license='Apache License 2.0',
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    zip_safe=False,
)
