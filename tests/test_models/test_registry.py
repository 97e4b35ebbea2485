"""``type='mmsparse.X'`` (backbones, hooks) resolves from mmdet's and mmseg's scopes, with or without custom_imports."""
import pytest

from ..utils import build_in_fresh_interpreter


@pytest.mark.parametrize('codebase', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('with_imports', [True, False])
def test_backbone_resolves_in_a_fresh_interpreter(codebase, with_imports):
    build = ("backbone = MODELS.build(dict(type='mmsparse.BiFormer', arch='tiny'))\n"
             "print(type(backbone).__module__, type(backbone).__name__)")
    lines = build_in_fresh_interpreter(codebase, 'MODELS', 'mmsparse.models', build, with_imports)
    assert lines[-1] == 'mmsparse.models.backbones.biformer BiFormer'


@pytest.mark.parametrize('codebase', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('with_imports', [True, False])
def test_rng_state_hook_resolves_in_a_fresh_interpreter(codebase, with_imports):
    build = ("hook = HOOKS.build(dict(type='mmsparse.RNGStateHook'))\n"
             "print(type(hook).__module__, type(hook).__name__)")
    lines = build_in_fresh_interpreter(codebase, 'HOOKS', 'mmsparse.engine', build, with_imports)
    assert lines[-1] == 'mmsparse.engine.hooks RNGStateHook'


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
