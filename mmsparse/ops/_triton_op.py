"""The Triton kernels as ``torch.library.triton_op`` custom ops.

A ``triton_op`` is a custom op whose implementation ``torch.compile`` can see: under
AOTAutograd it decomposes into its kernel launches (``wrap_triton``), which Inductor
schedules with the rest of the graph, while ``torch.export`` keeps it one node. Its fake
implementation is the function itself, run on fake tensors.

The Triton CPU interpreter (``TRITON_INTERPRET=1``, how the tests run the kernels without
a GPU) turns every ``@triton.jit`` function into a plain Python function that
``wrap_triton`` cannot trace. There, :func:`launch_triton` skips launches on fake
tensors (a fake tensor has a shape, no data), and :func:`triton_custom_op` keeps the op
one opaque node of a compiled graph, so the interpreted kernels run on real tensors when
the graph runs. On a GPU both behave exactly as ``torch.library`` documents.
"""
import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensorMode

from ._dispatch import interpreting


def launch_triton(kernel, grid, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, traceable inside a :func:`triton_custom_op`."""
    traceable = torch.library.wrap_triton(kernel)
    if traceable is kernel and any(isinstance(arg, FakeTensor) for arg in args):
        return  # an interpreted kernel, called to propagate shapes: the outputs are allocated
    traceable[grid](*args, **kwargs)


def triton_custom_op(name):
    """Decorator: ``torch.library.triton_op(name, fn, mutates_args=())``, whose launches go
    through :func:`launch_triton`, opaque to ``torch.compile`` under the interpreter."""

    def register(fn):
        op = torch.library.triton_op(name, fn, mutates_args=())
        decompose = op._torch_dispatch_fns[FunctionalTensorMode]  # registered by triton_op

        def functional(mode, func, types, args, kwargs):
            if interpreting():  # interpreted kernels cannot be traced: keep the op one node
                return mode.__torch_dispatch__(func, types, args, kwargs)
            return decompose(mode, func, types, args, kwargs)

        op.register_torch_dispatch(FunctionalTensorMode, functional)
        return op

    return register


__all__ = ['launch_triton', 'triton_custom_op']
