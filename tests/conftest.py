"""Shared fixtures: the official-output fixtures and the synthetic datasets."""
import importlib.util
import os
import os.path as osp

import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter. Triton picks
# interpreter or compiler when it is first imported, so this is set before any test
# module can import it.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# Scripts and interpreters that tests spawn import this checkout's mmsparse, whatever
# checkout the installed (editable) package points to.
os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')]))
FIXTURES_ENV = 'MMSPARSE_OFFICIAL_FIXTURES'


def official_fixtures_dir():
    """``$MMSPARSE_OFFICIAL_FIXTURES``, else ``../shared/fixtures/official`` beside the repo."""
    return os.environ.get(FIXTURES_ENV, osp.join(REPO_ROOT, '..', 'shared', 'fixtures', 'official'))


@pytest.fixture(scope='session')
def load_official():
    """Return a loader ``load(name) -> dict`` for a file of the official fixtures."""
    folder = official_fixtures_dir()
    if not osp.isdir(folder):
        pytest.skip(f'official fixtures folder {folder} is absent (set {FIXTURES_ENV} to its path)')

    def load(name):
        return torch.load(osp.join(folder, name), weights_only=True)

    return load


def load_tool(relpath):
    """Import a script under ``tools/`` as a module."""
    path = osp.join(REPO_ROOT, 'tools', relpath)
    spec = importlib.util.spec_from_file_location(osp.splitext(osp.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session')
def synthetic_data(tmp_path_factory):
    """A small synthetic ADE20K + COCO tree (``<root>/ade/...``, ``<root>/coco/...``)."""
    root = tmp_path_factory.mktemp('data')
    generator = load_tool('misc/generate_synthetic_data.py')
    generator.generate(str(root), datasets=('ade', 'coco'), num_train=8, num_val=4, size=(96, 128), seed=0)
    return root
