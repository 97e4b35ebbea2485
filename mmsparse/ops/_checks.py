"""Argument checks shared by every mmsparse op, the attention modules and the benchmark CLI.

Every op calls these before any computation (routing, padding, kernel launch), so a bad
argument is reported by name, with its value and what is allowed, instead of surfacing as
a raw PyTorch or Triton error deep inside the op. The token mixers of
``mmsparse.models.attentions`` check their hyper-parameters with the same functions at
build time, and ``tools/analysis_tools/benchmark.py`` turns their errors into usage errors,
so one rule (and one message) holds wherever a value comes in.
"""
import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_attention_tensors(op, tensors, same_dtype=True):
    """``tensors``: ordered ``{name: tensor}``; the first is the reference (usually ``q``).

    Raises TypeError for non-tensors, non-floating dtypes and (``same_dtype``) dtypes that
    differ from the first tensor's; ValueError for tensors on different devices.
    """
    items = list(tensors.items())
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{op}: {name} must be a torch.Tensor, got {type(t).__name__}')
        if not t.dtype.is_floating_point:
            raise TypeError(f'{op}: {name}.dtype={t.dtype} is not supported; expected a floating '
                            f'dtype, one of {FLOAT_DTYPES}')
    first_name, first = items[0]
    for name, t in items[1:]:
        if same_dtype and t.dtype != first.dtype:
            raise TypeError(f'{op}: {name}.dtype={t.dtype} must equal {first_name}.dtype={first.dtype}')
        if t.device != first.device:
            raise ValueError(f'{op}: {name}.device={t.device} must equal {first_name}.device='
                             f'{first.device}')


def check_positive_int(op, name, value):
    """``value`` must be a Python/NumPy int (not bool, not float) >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f'{op}: {name}={value!r} must be a positive int, got {type(value).__name__}')
    if value < 1:
        raise ValueError(f'{op}: {name}={value!r} must be a positive int')


def check_scale(op, scale):
    """``scale`` must be None or a finite positive real number."""
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f'{op}: scale={scale!r} must be a finite positive float or None, got '
                        f'{type(scale).__name__}')
    if not math.isfinite(float(scale)) or scale <= 0:
        raise ValueError(f'{op}: scale={scale!r} must be a finite positive float or None')


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_num_heads(num_heads, channels, channels_name='embed_dims'):
    """``num_heads`` must be a positive int dividing ``channels`` (named ``channels_name``)."""
    if not _is_int(num_heads) or num_heads < 1 or channels % num_heads:
        raise ValueError(f'num_heads={num_heads!r} must be a positive divisor of {channels_name}={channels}')


def check_kernel_size(kernel_size):
    """A neighbourhood-attention window side: an odd int >= 3."""
    if not _is_int(kernel_size) or kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size={kernel_size!r} must be an odd int >= 3')


def check_dilation(dilation):
    """A neighbourhood-attention dilation: an int >= 1."""
    if not _is_int(dilation) or dilation < 1:
        raise ValueError(f'dilation={dilation!r} must be an int >= 1')


def check_topk(topk, n_win):
    """Bi-level routing: ``topk`` routed regions out of the ``n_win**2`` regions."""
    if not _is_int(topk) or not 1 <= topk <= n_win * n_win:
        raise ValueError(f'topk={topk!r} must be in [1, n_win**2 = {n_win * n_win}] for n_win={n_win}')


def check_not_meta(op, backend, tensors):
    """Triton kernels (interpreted or compiled) cannot read meta tensors."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_meta:
            raise ValueError(f'{op}: {name} is on the meta device; the {backend} backend needs CUDA '
                             'tensors (or TRITON_INTERPRET=1 with CPU tensors)')


__all__ = ['check_attention_tensors', 'check_positive_int', 'check_scale', 'check_not_meta',
           'check_num_heads', 'check_kernel_size', 'check_dilation', 'check_topk',
           'FLOAT_DTYPES']
