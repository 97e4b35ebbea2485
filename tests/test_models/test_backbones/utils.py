"""Checks and tiny models shared by the backbone tests."""
import pytest
import torch

from mmsparse.models.backbones import NAT, BiFormer, FibottentionViT, HATNet

# One block per stage (FibottentionViT: 4 layers), so that compiling or exporting takes seconds.
TINY_BACKBONES = {
    'biformer': (BiFormer, dict(arch=dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128), head_dim=8),
                                n_win=2, topks=(1, 2, 4, -1))),
    'nat': (NAT, dict(arch=dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), mlp_ratio=2.),
                      dilations=[[2], [1], [1], [1]])),
    'hat_net': (HATNet, dict(arch=dict(embed_dims=(16, 32, 48, 64), head_dim=8, depths=(1, 1, 1, 1),
                                       expansions=(2, 2, 2, 2), grid_sizes=(8, 7, 7, 1), ds_ratios=(8, 4, 2, 1),
                                       kernel_sizes=(3, 3, 3, 3)))),
    'fibottention_vit': (FibottentionViT, dict(arch=dict(embed_dims=32, num_layers=4, num_heads=2, mlp_ratio=2),
                                               img_size=64)),
}


def tiny_backbone(family, **overrides):
    """The :data:`TINY_BACKBONES` model of ``family``, with ``overrides`` on its arguments."""
    cls, kwargs = TINY_BACKBONES[family]
    return cls(**{**kwargs, **overrides})


def assert_checkpointing_keeps_gradients(plain, checkpointed, x):
    """``checkpointed`` (``with_cp=True``) gets the same weights and gradients as ``plain``."""
    checkpointed.load_state_dict(plain.state_dict())
    for model in (plain, checkpointed):
        sum(o.square().sum() for o in model(x)).backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def assert_drop_path_linear(stages, rate, num_blocks):
    """The ``num_blocks`` blocks of ``stages`` drop their residual branch with rates rising linearly
    from 0 to ``rate`` (a block without ``DropPath`` counts as rate 0)."""
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0. for stage in stages for b in stage]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, rate, num_blocks))


# out_indices every 4-output backbone must refuse: (value, error, message).
BAD_OUT_INDICES = [
    ((1.5, ), TypeError, r'out_indices=\(1\.5,\) must hold ints in \[-4, 3\].*1\.5 is a float'),
    (('a', ), TypeError, r"out_indices=\('a',\) must hold ints in \[-4, 3\].*'a' is a str"),
    ((9, ), ValueError, r'out_indices=\(9,\) must hold ints in \[-4, 3\].*9 is out of range'),
    ((True, ), TypeError, r'out_indices=\(True,\) must hold ints in \[-4, 3\].*True is a bool'),
    ((3, -1), ValueError, r'out_indices=\(3, -1\) must hold ints in \[-4, 3\].*3 is selected more than once'),
    ('0', TypeError, r"out_indices='0' must be an int or a sequence of ints in \[-4, 3\]"),
]


def assert_frozen_stages(model, stem, stages, frozen_stages):
    """After ``train()``, ``stem`` and the first ``frozen_stages`` of ``stages`` are frozen, the rest not.

    ``stem`` is a list of modules, ``stages`` a list (one per stage) of lists of modules.
    Frozen means no parameter requires grad and every submodule stays in eval mode.
    """
    model.train()
    groups = [stem] + list(stages)
    num_frozen = 0 if frozen_stages < 0 else frozen_stages + 1
    for j, group in enumerate(groups):
        frozen = j < num_frozen
        label = 'stem' if j == 0 else f'stage {j - 1}'
        for module in group:
            assert all(p.requires_grad != frozen for p in module.parameters()), (label, frozen_stages)
            assert all(m.training != frozen for m in module.modules()), (label, frozen_stages)


def downsampling_stem_and_stages(model):
    """The expected freezing units of a backbone built on ``downsample_layers``.

    The stem is ``downsample_layers[0]``; stage ``i`` is its downsampling layer (none for
    stage 0, whose is the stem), its blocks and its output norm ``norm{i}``.
    """
    stages = [([model.downsample_layers[i]] if i else []) + [model.stages[i], getattr(model, f'norm{i}')]
              for i in range(len(model.stages))]
    return [model.downsample_layers[0]], stages


def assert_imagenet_weights_loaded(model, reference, atol=None, rtol=None):
    """``model`` holds ``reference``'s weights, but for its output norms, which keep their default init.

    Official ImageNet checkpoints have no output norms ``norm*`` (the classifier has one final
    norm instead), so after loading one those stay at weight 1, bias 0.

    Args:
        model (torch.nn.Module): The backbone after ``init_weights()`` loaded the checkpoint.
        reference (torch.nn.Module): The backbone that loaded the official weights directly; every
            one of its keys must be in ``model``, every key of ``model`` but the output norms in it.
        atol (float, optional): Absolute tolerance of the weights, compared in the reference's
            dtype. Defaults to None: the default of ``torch.testing.assert_close`` for that dtype.
        rtol (float, optional): Relative tolerance, given with ``atol``. Defaults to None: as ``atol``.
    """
    weights, expected_weights = model.state_dict(), reference.state_dict()
    missing = expected_weights.keys() - weights.keys()
    assert not missing, f'the model lacks weights of the reference: {sorted(missing)}'
    for key, value in weights.items():
        if key.startswith('norm'):
            value = value.double()
            expected = torch.ones_like(value) if key.endswith('weight') else torch.zeros_like(value)
            torch.testing.assert_close(value, expected)
        else:
            expected = expected_weights[key]
            torch.testing.assert_close(value.to(expected.dtype), expected, atol=atol, rtol=rtol, msg=key)


def assert_load_refused(model, load, match):
    """``load()`` raises a RuntimeError matching ``match`` and changes no tensor of ``model``.

    A failed load must never leave a half-initialised model.

    Args:
        model (torch.nn.Module): The model ``load`` loads weights into.
        load (Callable[[], object]): The load, e.g. ``model.init_weights``.
        match (str): The pattern the error message must match (``pytest.raises``).
    """
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=match):
        load()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
