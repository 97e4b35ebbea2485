"""Argument checks shared by every mmsparse op.

Every op calls these before any computation (routing, padding, kernel launch), so a bad
argument is reported by name, with its value and what is allowed, instead of surfacing as
a raw PyTorch or Triton error deep inside the op.
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


def check_not_meta(op, backend, tensors):
    """Triton kernels (interpreted or compiled) cannot read meta tensors."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_meta:
            raise ValueError(f'{op}: {name} is on the meta device; the {backend} backend needs CUDA '
                             'tensors (or TRITON_INTERPRET=1 with CPU tensors)')


__all__ = ['check_attention_tensors', 'check_positive_int', 'check_scale', 'check_not_meta',
           'FLOAT_DTYPES']
