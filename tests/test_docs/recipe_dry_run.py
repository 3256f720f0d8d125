"""Run a tool's argument parsing and config building only (docs recipes).

``python tests/test_docs/recipe_dry_run.py SCRIPT ARGS...`` runs ``SCRIPT`` as
``python SCRIPT ARGS...`` would, except that it stops:

* in a tool that builds an mmengine ``Runner`` (``tools/test.py``,
  ``train.py``, ``generate_pseudo_labels.py``), when the Runner is built: the
  arguments were parsed, the config loaded with ``--cfg-options`` and
  ``--data-root`` merged, and its model type must be registered;
* in any other script, right after its first ``parse_args``.

``tests/test_docs/test_recipes.py`` runs the ``<!-- recipe: parse -->`` blocks of
the docs through it: commands on datasets that the suite does not have still
have their spelling, options and config checked. Anything that is not a
``.py`` script (``python -c``, ``python -m``) runs as it is.
"""
import argparse
import os
import os.path as osp
import runpy
import sys


def _stop(message: str) -> None:
    print(f'recipe dry run: {message}', flush=True)
    sys.exit(0)


def _stop_at_runner() -> None:
    from mmengine.runner import Runner

    def init(self, *args, **kwargs) -> None:
        cfg = kwargs.get('cfg')
        model = kwargs.get('model')
        model_type = model.get('type') if isinstance(model, dict) else None
        if model_type is not None:
            from mmseg.registry import MODELS
            if MODELS.get(model_type) is None:
                raise KeyError(f'model type {model_type!r} of the config is not registered')
        _stop(f'config built (model {model_type}, work_dir {getattr(cfg, "work_dir", None)})')

    Runner.__init__ = init


def _stop_after_parse_args() -> None:
    parse_args = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        parse_args(self, args, namespace)
        _stop('arguments parsed')

    argparse.ArgumentParser.parse_args = parse_and_stop


def main() -> None:
    if len(sys.argv) < 2 or not sys.argv[1].endswith('.py'):
        os.execv(sys.executable, [sys.executable] + sys.argv[1:])
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    with open(script, encoding='utf-8') as f:
        builds_runner = 'Runner' in f.read()
    if builds_runner:
        _stop_at_runner()
    else:
        _stop_after_parse_args()
    sys.path.insert(0, osp.dirname(osp.realpath(script)))
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
