"""One rule that picks the implementation of every mmsparse op.

Priority: the op's ``backend=`` argument, then the environment variable
``MMSPARSE_ATTN_BACKEND``, then the device: CUDA tensors go to Triton, all
other tensors to the pure-PyTorch reference. Under ONNX export every op takes the torch
path, whatever it is asked for: ONNX has no ``mmsparse::`` op.
"""
import os
from contextlib import contextmanager

import torch

BACKENDS = ('auto', 'torch', 'triton')
ENV_VAR = 'MMSPARSE_ATTN_BACKEND'


def resolve_backend(backend, *tensors, needs_triton=True):
    """Return ``'torch'`` or ``'triton'`` for a call on ``tensors``.

    Args:
        backend (str | None): ``'auto'``, ``'torch'``, ``'triton'`` or None (defer
            to ``MMSPARSE_ATTN_BACKEND``, default ``'auto'``).
        *tensors (Tensor): the op's inputs; ``'auto'`` looks at their device.
        needs_triton (bool): whether the op's fast path is a Triton kernel. Ops whose
            fast path is plain PyTorch (H-MHSA's SDPA) take it without triton installed.
    """
    source = 'backend'
    if backend is None:
        backend, source = os.environ.get(ENV_VAR, 'auto').strip().lower() or 'auto', ENV_VAR
    if backend not in BACKENDS:
        raise ValueError(f'{source}={backend!r} is not a valid attention backend; '
                         f'expected one of {BACKENDS}')
    if inline_reference():  # ONNX has no mmsparse:: op: every op runs its torch implementation
        return 'torch'
    if backend == 'auto':
        on_cuda = all(t.is_cuda for t in tensors)
        return 'triton' if on_cuda and (triton_available() or not needs_triton) else 'torch'
    if backend == 'triton' and needs_triton and not triton_available():
        raise RuntimeError(f'{source}=\'triton\' was requested but triton is not installed')
    return backend


# Crossovers of the pure-PyTorch path, measured on CPU (docs/benchmarks.md). An op with
# two exact torch algorithms computes the dense masked attention (SDPA or matmul over all
# pairs, masked to the op's support) below ``DENSE_BELOW_TOKENS[op]`` key tokens, and the
# gather algorithm, whose work grows with the kept entries only, from there on.
DENSE_BELOW_TOKENS = {
    # NA, eager calls: dense, or the tiled dense algorithm (na2d_tiled: masked SDPA per tile of
    # 8x8 queries over the keys their windows cover), which wins from here on at any size.
    # k=7, 2 heads of 32, float32, 2 threads, B=1: tiled/dense time forward / forward+backward
    # 1.58 / 1.62 at 20x20 without rpb, 1.27 / 1.29 at 22x22 without rpb (0.92 / 0.82 with),
    # 0.91 / 0.97 at 24x24 without rpb (0.67 / 0.63 with). Other k scale the tokens (na2d_torch).
    'neighborhood_attention_2d_tiled': 576,
    # NA, traced calls (compile, export, fake tensors), which cannot build the tiled layout:
    # k=7, 2 heads of 32, float32, 2 threads: gather/dense time 1.05 (forward) and 2.85
    # (forward + backward) at 32x32, 0.77 and 1.47 at 40x40, 0.35 and 0.73 at 48x48.
    'neighborhood_attention_2d': 1600,
    # 1-D layout with CLS, 6 heads of 64, float32, 2 threads; dense = masked SDPA (sparse mode)
    # or the masked matmul-softmax (official mode, as the official code): the gather takes
    # 3.4x (forward) and 3.1x (forward + backward) the sparse-mode dense time at T=1025,
    # 2.3x (forward + backward, B=1) at T=2049. Official mode, T=1025: gather / official 0.65
    # (forward) but 1.08 (forward + backward). Above ~2k tokens the gather's memory, which
    # grows with the kept entries, wins over the (heads, T, T) mask.
    'fibottention_attention': 2100,
}
TORCH_ALGORITHMS = ('dense', 'sparse')


def torch_algorithm(op, n_tokens):
    """``'dense'`` or ``'sparse'``: the torch algorithm of ``op`` for ``n_tokens`` key tokens."""
    return 'dense' if n_tokens < DENSE_BELOW_TOKENS.get(op, 0) else 'sparse'


def inline_reference():
    """True while the op should run its reference as plain aten ops instead of its custom op.

    Every public op is a ``torch.library`` custom op (``mmsparse::<op>``), which
    ``torch.compile`` and the FLOP counter see as one node. ONNX has no such op, so while
    ``torch.onnx.export`` traces a model the public functions call their reference directly.
    """
    return torch.onnx.is_in_onnx_export()


_STATE = {'through_custom_ops': False}   # see through_custom_ops()


def runs_inline(*tensors):
    """True when a public op should run its pure-PyTorch implementation as plain aten ops, not
    its custom op (the Triton backend has ``triton_op``s of its own).

    * Under ONNX export (:func:`inline_reference`): ONNX has no ``mmsparse::`` op.
    * An eager call of a pure-PyTorch path on plain tensors. The custom op would add a
      dispatch round trip to every call, and, when autograd records the call, a backward
      that reruns the forward (a custom op keeps no graph of its implementation, see
      :func:`recompute_gradients`); inline, autograd saves the forward's tensors and a
      training step costs what the official code's does (one forward, one backward).

    The custom op stays where it is one node of a graph: under ``torch.compile``,
    ``torch.export`` and ``torch.jit.trace`` (the FLOP counter), on fake, functional or meta
    tensors, and inside :func:`through_custom_ops`.

    Args:
        *tensors (Tensor | None): the op's tensor inputs.
    """
    if inline_reference():
        return True
    if _STATE['through_custom_ops']:
        return False
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
        return False
    return all(t is None or (is_plain_tensor(t) and not t.is_meta) for t in tensors)


def is_plain_tensor(t):
    """True for a ``torch.Tensor`` or an ``nn.Parameter`` (NA's rpb), whose data eager code may
    read; False for the fake, functional and other subclass tensors of a trace."""
    return type(t) is torch.Tensor or type(t) is torch.nn.Parameter


@contextmanager
def through_custom_ops():
    """Eager calls go through the custom ops (and their registered backward) as in a traced
    graph: for the tests of the custom ops, and to compare the two."""
    previous, _STATE['through_custom_ops'] = _STATE['through_custom_ops'], True
    try:
        yield
    finally:
        _STATE['through_custom_ops'] = previous


def recompute_gradients(fn, inputs, grad_output):
    """Gradients of ``fn(*inputs)`` for the backward of a custom op, by recomputing it.

    A ``torch.library`` custom op keeps no autograd graph of its implementation, so its
    backward reruns the (pure-PyTorch) implementation on detached copies under
    ``torch.enable_grad()`` and differentiates that; AOTAutograd traces this like any
    other backward.

    Args:
        fn (callable): ``fn(*inputs) -> Tensor``, the op's implementation.
        inputs (Sequence[Tensor | None]): its tensor arguments; None entries (an absent
            optional tensor) are passed as None and get a None gradient.
        grad_output (Tensor): gradient of the output.

    Returns:
        list[Tensor | None]: one gradient per entry of ``inputs``.
    """
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_() for t in inputs]
        out = fn(*leaves)
        wrt = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(out, wrt, grad_output, allow_unused=True))
    return [None if t is None else next(grads) for t in leaves]


def triton_available():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting():
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def check_triton_device(name, *tensors):
    """Triton kernels need CUDA tensors unless the interpreter is on (never meta tensors)."""
    for t in tensors:
        if t.is_meta:
            raise ValueError(f'{name} is on the meta device; the triton backend needs CUDA tensors '
                             '(or TRITON_INTERPRET=1 with CPU tensors)')
    if interpreting():
        return
    for t in tensors:
        if not t.is_cuda:
            raise RuntimeError(f'{name}: the triton backend needs CUDA tensors (got device '
                               f'{t.device}); use backend=\'torch\' or set TRITON_INTERPRET=1')


__all__ = ['resolve_backend', 'inline_reference', 'runs_inline', 'is_plain_tensor', 'through_custom_ops',
           'recompute_gradients', 'torch_algorithm', 'DENSE_BELOW_TOKENS', 'triton_available', 'interpreting',
           'check_triton_device', 'BACKENDS']
