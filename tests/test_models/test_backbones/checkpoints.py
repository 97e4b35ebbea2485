"""Checks of the backbone tests that load checkpoints."""
import pytest
import torch


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
