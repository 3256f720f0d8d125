"""Installation script for ``tagclip_mmseg``.

``install_requires`` never replaces the torch or mmcv of an existing
environment: it admits every torch from 2.1 on (the tested range is in
docs/compatibility.md, "The tested range"; ``tagclip_mmseg`` names it at import),
does not list torchvision (it comes with torch, and an unpinned requirement
would pull the newest torch where it is missing) and admits the mmcv 2.0/2.1
releases mmseg 1.2 accepts. ``requirements/constraints.txt`` pins the exact
default stack (see ``Makefile``).
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
        'torch>=2.1',
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
