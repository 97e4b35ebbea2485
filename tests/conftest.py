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
# Outputs of the official implementations, kept in the repository; provenance, keys and
# tolerances of every file: tests/data/official/README.md.
OFFICIAL_FIXTURES_DIR = osp.join(REPO_ROOT, 'tests', 'data', 'official')
# Every official fixture the tests load. ``load_official`` refuses any other name, and
# tests/test_official_fixtures.py checks that each one is in OFFICIAL_FIXTURES_DIR (with
# the checksum of tests/data/official/SHA256SUMS) and that no test names a file missing here.
OFFICIAL_FIXTURES = (
    'biformer_bra_op.pt',
    'biformer_backbone_tiny_reduced.pt',
    'nat_op.pt',
    'nat_backbone_reduced.pt',
    'dinat_backbone_reduced.pt',
    'hatnet_hmhsa_op.pt',
    'hatnet_backbone_reduced.pt',
    'fibottention_mask.pt',
    'fibottention_attn_op.pt',
    'fibottention_vit_reduced.pt',
)


def official_fixtures_dir():
    """``$MMSPARSE_OFFICIAL_FIXTURES`` if set, else ``tests/data/official`` of this checkout."""
    return os.environ.get(FIXTURES_ENV) or OFFICIAL_FIXTURES_DIR


def official_fixture_path(name):
    """Path of the official fixture ``name``; fails the calling test if it is missing.

    A missing folder or file is a failure, never a skip: the reproduction tests are the
    evidence that mmsparse matches the official code, so they must not vanish silently.
    """
    if name not in OFFICIAL_FIXTURES:
        pytest.fail(f'{name!r} is not a known official fixture; add it to OFFICIAL_FIXTURES in '
                    f'tests/conftest.py and describe it in tests/data/official/README.md', pytrace=False)
    folder = official_fixtures_dir()
    source = f'set by ${FIXTURES_ENV}' if os.environ.get(FIXTURES_ENV) else 'the default'
    if not osp.isdir(folder):
        pytest.fail(f'official fixtures folder {folder} ({source}) does not exist; the fixtures ship '
                    f'with the repository in {OFFICIAL_FIXTURES_DIR}', pytrace=False)
    path = osp.join(folder, name)
    if not osp.isfile(path):
        pytest.fail(f'official fixture {path} is missing (folder {source}); the files and their '
                    f'provenance are listed in tests/data/official/README.md', pytrace=False)
    return path


@pytest.fixture(scope='session')
def load_official():
    """Return a loader ``load(name) -> dict`` for a file of the official fixtures.

    The loader fails the test (with the path) when the folder or the file is missing.
    """

    def load(name):
        return torch.load(official_fixture_path(name), weights_only=True)

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
