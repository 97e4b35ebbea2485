"""``type='mmsparse.BiFormer'`` resolves from mmdet's and mmseg's scopes, with or without custom_imports."""
import subprocess
import sys

import pytest

from ..conftest import REPO_ROOT

BUILD = """
import sys
from mmengine.registry import init_default_scope
{imports}
from {codebase}.registry import MODELS
init_default_scope('{codebase}')
assert 'mmsparse.models' not in sys.modules or {with_imports}
backbone = MODELS.build(dict(type='mmsparse.BiFormer', arch='tiny'))
print(type(backbone).__module__, type(backbone).__name__)
"""


@pytest.mark.parametrize('codebase', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('with_imports', [True, False])
def test_backbone_resolves_in_a_fresh_interpreter(codebase, with_imports):
    imports = ("from mmengine.utils import import_modules_from_strings\n"
               "import_modules_from_strings(['mmsparse.models'])") if with_imports else ''
    code = BUILD.format(imports=imports, codebase=codebase, with_imports=with_imports)
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith('mmsparse.models.backbones.biformer BiFormer')


def test_registry_is_a_child_of_mmengine_root():
    from mmengine.registry import MODELS as ROOT

    from mmsparse.registry import MODELS
    assert MODELS.parent is ROOT and MODELS.scope == 'mmsparse'
    assert 'mmsparse.models' in MODELS._locations


def test_unprefixed_type_fails_with_the_scope_in_the_message():
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        with pytest.raises(KeyError, match='BiFormer'):
            MODELS.build(dict(type='BiFormer'))
