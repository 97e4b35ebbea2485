"""model-index.yml and the metafiles: complete, loadable, traceable, and seen by `mim search`."""
import glob
import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys

import modelindex
import pytest
from mmengine.config import Config

from ..conftest import REPO_ROOT

FAMILIES = ('biformer', 'nat', 'hat_net', 'fibottention')
CONVERTERS = {'biformer': 'biformer2mmsparse.py', 'nat': 'nat2mmsparse.py',
              'hat_net': 'hatnet2mmsparse.py', 'fibottention': 'vit2mmsparse.py'}


@pytest.fixture(scope='module')
def index():
    return modelindex.load(osp.join(REPO_ROOT, 'model-index.yml'))


@pytest.fixture(scope='module')
def configs(index):
    """Every listed config, loaded once (about 1 s each: mmdet/mmseg base files)."""
    return {model.name: Config.fromfile(osp.join(REPO_ROOT, model.config))
            for model in index.models}


def family_of(model):
    return model.config.split('/')[1]


def test_every_family_config_is_listed_once(index):
    listed = [model.config for model in index.models]
    assert len(listed) == len(set(listed))
    expected = sorted(osp.relpath(path, REPO_ROOT) for family in FAMILIES
                      for path in glob.glob(osp.join(REPO_ROOT, 'configs', family, '*.py')))
    assert sorted(listed) == expected
    # the model name is the config's file name, as in mmdet and mmseg
    assert [model.name for model in index.models] == [
        osp.splitext(osp.basename(c))[0] for c in listed]


@pytest.mark.slow
def test_metafile_entries_load(index, configs):
    collections = {c.name: c for c in index.collections}
    assert sorted(collections) == ['BiFormer', 'Fibottention', 'HAT-Net', 'NAT']
    for model in index.models:
        family = family_of(model)
        cfg = configs[model.name]
        assert cfg.model.backbone.type.startswith('mmsparse.'), model.name
        collection = collections[model.in_collection]
        assert osp.isfile(osp.join(REPO_ROOT, collection.readme))
        assert collection.readme == f'configs/{family}/README.md'
        metadata = model.metadata.data
        expected_data = ('Synthetic' if 'synthetic' in model.name
                         else 'COCO' if model.name.endswith('coco') else 'ADE20K')
        assert metadata['Training Data'].startswith(expected_data), model.name


@pytest.mark.slow
def test_weights_and_converter(index, configs):
    for model in index.models:
        if 'synthetic' in model.name:  # trained from scratch on generated data
            assert model.weights is None and 'Converter' not in model.data
            continue
        assert re.match(r'https://\S+$', model.weights), model.name
        converter = model.data['Converter'].split()[0]
        assert converter == f'tools/model_converters/{CONVERTERS[family_of(model)]}'
        assert osp.isfile(osp.join(REPO_ROOT, converter))
        # the checkpoint the converter note names is the one the config loads
        checkpoint = configs[model.name].model.backbone.init_cfg.checkpoint
        assert osp.basename(checkpoint) in model.data['Converter'], model.name


def test_results_are_the_readmes_numbers(index):
    """Every metric is a number of the family README's results tables, with its source."""
    seen = 0
    for model in index.models:
        if not model.results:
            assert 'Results Source' not in model.data
            continue
        assert f'configs/{family_of(model)}/README.md' in model.data['Results Source']
        with open(osp.join(REPO_ROOT, 'configs', family_of(model), 'README.md')) as f:
            readme = f.read()
        for result in model.results:
            assert result.task in ('Semantic Segmentation', 'Object Detection',
                                   'Instance Segmentation')
            for metric, value in result.metrics.items():
                assert re.search(rf'(?<![\d.]){re.escape(f"{value:.1f}")}(?![\d])', readme), (
                    model.name, metric, value)
                seen += 1
    assert seen >= 20  # BiFormer S/B and NAT/DiNAT-T have published numbers


def load_setup():
    spec = importlib.util.spec_from_file_location('mmsparse_setup', osp.join(REPO_ROOT, 'setup.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself only runs as __main__
    return module


@pytest.mark.parametrize('argv,mode', [(['editable_wheel'], 'symlink'), (['develop'], 'symlink'),
                                       (['bdist_wheel'], 'copy'), (['sdist'], 'copy'),
                                       (['egg_info'], None)])
def test_add_mim_extension(tmp_path, argv, mode):
    setup = load_setup()
    assert setup.mim_install_mode(['setup.py', *argv]) == mode
    (tmp_path / 'configs' / 'nat').mkdir(parents=True)
    (tmp_path / 'configs' / 'nat' / 'metafile.yml').write_text('Models: []\n')
    (tmp_path / 'tools').mkdir()
    (tmp_path / 'tools' / 'train.py').write_text('# train\n')
    (tmp_path / 'model-index.yml').write_text('Import: []\n')
    # a stale entry of an earlier install is replaced
    (tmp_path / 'mmsparse' / '.mim' / 'tools').mkdir(parents=True)
    setup.add_mim_extension(['setup.py', *argv], root=str(tmp_path))
    mim = tmp_path / 'mmsparse' / '.mim'
    if mode is None:
        assert sorted(os.listdir(mim)) == ['tools'] and not os.listdir(mim / 'tools')
        return
    for name in ('configs', 'tools', 'model-index.yml'):
        assert (mim / name).is_symlink() == (mode == 'symlink'), name
    assert (mim / 'configs' / 'nat' / 'metafile.yml').read_text() == 'Models: []\n'
    assert (mim / 'tools' / 'train.py').read_text() == '# train\n'
    assert (mim / 'model-index.yml').read_text() == 'Import: []\n'


def test_mim_search_lists_every_model(index, tmp_path):
    # Outside the checkout, so mim finds the installed package (tools/install.py), not the
    # working directory's mmsparse.egg-info.
    result = subprocess.run([sys.executable, '-m', 'mim', 'search', 'mmsparse'], cwd=tmp_path,
                            capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
    assert result.returncode == 0, result.stderr[-3000:]
    listed = re.findall(r'^config id: (\S+)$', result.stdout, flags=re.M)
    assert sorted(listed) == sorted(model.name for model in index.models)
    assert 'ade20k/miou           49.9' in result.stdout  # fpn_biformer-b, from its metafile
