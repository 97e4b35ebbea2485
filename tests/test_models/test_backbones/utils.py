"""Checks shared by the backbone tests."""
import torch


def assert_checkpointing_keeps_gradients(plain, checkpointed, x):
    """``checkpointed`` (``with_cp=True``) gets the same weights and gradients as ``plain``."""
    checkpointed.load_state_dict(plain.state_dict())
    for model in (plain, checkpointed):
        sum(o.square().sum() for o in model(x)).backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
