"""Checkpoint loading that stays safe on torch >= 2.6 and still reads MMEngine checkpoints.

torch >= 2.6 loads with ``weights_only=True`` by default, which refuses MMEngine's
own checkpoints: their ``message_hub`` holds ``HistoryBuffer`` objects, numpy arrays
and scalars, and ``getattr`` calls (``getattr(HistoryBuffer, 'mean')``: protocol-2
pickles reference methods that way). Turning the check off
(``weights_only=False``, ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``) or allow-listing a
bare ``getattr`` in torch's safe globals would let any checkpoint run code, so
neither happens here. Instead :func:`safe_load` retries with a restricted unpickler
of our own that admits an explicit allow-list of globals and a guarded ``getattr``.
"""
import _compat_pickle
import argparse
import codecs
import functools
import os.path as osp
import pickle
import re
import types
from collections import Counter, OrderedDict

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

# ``torch.load(weights_only=True)`` reports a refused global with one of these
# phrases (torch >= 2.4, then older releases); any other failure (corrupt file,
# bad opcode) is not retried.
_REFUSED_GLOBAL = re.compile(r'GLOBAL \S+ (was not an allowed global|whose module \S+ is blocked)'
                             r'|Unsupported class \S+')

# Tensor rebuild helpers torch itself trusts in weights-only mode. Resolved by
# name because the set differs between torch releases.
_TORCH_REBUILD_FUNCTIONS = (
    '_rebuild_tensor', '_rebuild_tensor_v2', '_rebuild_tensor_v3', '_rebuild_parameter',
    '_rebuild_parameter_with_state', '_rebuild_qtensor', '_rebuild_sparse_tensor',
    '_rebuild_meta_tensor_no_storage', '_rebuild_nested_tensor', '_rebuild_wrapper_subclass',
    '_rebuild_device_tensor_from_cpu_tensor', '_rebuild_device_tensor_from_numpy')

# Keys under which checkpoints keep the model weights, most specific first.
_STATE_DICT_KEYS = ('state_dict', 'model', 'module')


def _numpy_multiarray():
    """Return numpy's ``multiarray`` module (``numpy._core`` in numpy >= 2)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # older numpy has only numpy.core
        from numpy.core import multiarray
    return multiarray


@functools.lru_cache(maxsize=None)
def _numpy_dtype_classes():
    """Return ``{name: class}`` of the ``numpy.dtypes.<X>DType`` classes."""
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25
    if dtypes is None:
        return {}
    return {
        name: cls
        for name, cls in vars(dtypes).items()
        if name.endswith('DType') and isinstance(cls, type) and issubclass(cls, np.dtype)
    }


@functools.lru_cache(maxsize=None)
def _allowed_globals():
    """Return the ``{'module.name': object}`` allow-list of the restricted unpickler.

    Storage types (``torch.FloatStorage`` …) need no entry: torch's own unpickler
    wrapper resolves every ``*Storage`` global before it reaches ``find_class``.
    """
    multiarray = _numpy_multiarray()
    allowed = {
        'collections.OrderedDict': OrderedDict,
        'collections.Counter': Counter,
        'argparse.Namespace': argparse.Namespace,
        # protocol-2 pickles (torch.save's default) encode ``bytes`` this way
        '_codecs.encode': codecs.encode,
        'builtins.set': set,
        'builtins.frozenset': frozenset,
        'builtins.bytearray': bytearray,
        'builtins.complex': complex,
        'mmengine.logging.history_buffer.HistoryBuffer': HistoryBuffer,
        'numpy.ndarray': np.ndarray,
        'numpy.dtype': np.dtype,
        'torch.Size': torch.Size,
        'torch.device': torch.device,
        'torch.Tensor': torch.Tensor,
        'torch._tensor._rebuild_from_type_v2': torch._tensor._rebuild_from_type_v2,
    }
    # Checkpoints written under numpy 1.x name ``numpy.core``; numpy 2 moved it.
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        allowed[f'{module}._reconstruct'] = multiarray._reconstruct
        allowed[f'{module}.scalar'] = multiarray.scalar
    for name, cls in _numpy_dtype_classes().items():
        allowed[f'numpy.dtypes.{name}'] = cls
    for name in _TORCH_REBUILD_FUNCTIONS:
        if hasattr(torch._utils, name):
            allowed[f'torch._utils.{name}'] = getattr(torch._utils, name)
    for name, value in vars(torch).items():
        if isinstance(value, torch.dtype):
            allowed[f'torch.{name}'] = value
    return allowed


def _guarded_getattr(obj, name):
    """Stand-in for ``builtins.getattr`` inside the restricted unpickler.

    MMEngine checkpoints use ``getattr`` for two things only: a numpy DType class
    (``getattr(numpy.dtypes, 'Float64DType')``) and a ``HistoryBuffer`` statistic
    method (``getattr(HistoryBuffer, 'mean')``). Everything else is refused.
    """
    if isinstance(name, str):
        if obj is getattr(np, 'dtypes', None) and name in _numpy_dtype_classes():
            return getattr(obj, name)
        if obj is HistoryBuffer and not name.startswith('_') and hasattr(obj, name):
            return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'global builtins.getattr is not allowed on {obj!r} with attribute {name!r}')


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of an explicit allow-list."""

    def find_class(self, module, name):
        """Return the allow-listed object ``module.name`` or raise ``UnpicklingError``."""
        # Overriding find_class skips pickle's own protocol-2 renames
        # (``__builtin__`` -> ``builtins``), so apply them here.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        path = f'{module}.{name}'
        if path == 'builtins.getattr':
            return _guarded_getattr
        if path in _allowed_globals():
            return _allowed_globals()[path]
        raise pickle.UnpicklingError(f'global {path} is not allowed in a checkpoint')


def _restricted_load(file, **kwargs):
    """``pickle.load`` through :class:`RestrictedUnpickler`.

    torch also calls ``pickle_module.load`` directly (legacy-format headers), so
    a plain ``pickle.load`` here would be an unrestricted way in.
    """
    return RestrictedUnpickler(file, **kwargs).load()


# The ``pickle_module`` handed to ``torch.load``: torch uses its ``Unpickler``,
# ``load`` and ``__name__``.
restricted_pickle = types.ModuleType('mmsparse_restricted_pickle')
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _restricted_load


def safe_load(file, map_location='cpu'):
    """Load a checkpoint without ever allowing arbitrary code execution.

    First ``torch.load(weights_only=True)``; if that refuses a global (MMEngine
    checkpoints with ``message_hub``, numpy data), retry with
    :data:`restricted_pickle`, whose allow-list covers those checkpoints and
    nothing that can run commands or write files.

    Args:
        file (str | os.PathLike | file-like): Checkpoint path or a seekable,
            readable binary stream.
        map_location: Same as :func:`torch.load`. Defaults to ``'cpu'``.

    Returns:
        The unpickled checkpoint, usually a dict.

    Raises:
        pickle.UnpicklingError: The checkpoint references a global outside the
            allow-list; the message names it, e.g. ``global posix.system is not
            allowed``.
    """
    start = file.tell() if hasattr(file, 'seek') else None
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not _REFUSED_GLOBAL.search(str(error)):
            raise
    if start is not None:
        file.seek(start)
    return torch.load(
        file, map_location=map_location, weights_only=False, pickle_module=restricted_pickle)


def load_from_local_safe(filename, map_location=None):
    """MMEngine ``CheckpointLoader`` backend for local files, using :func:`safe_load`.

    Same contract as ``mmengine.runner.checkpoint.load_from_local``; MMEngine logs
    the backend by the name after ``load_from_`` (``local_safe``).
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_load(filename, map_location=map_location)


def install_safe_checkpoint_loading():
    """Make MMEngine load local checkpoints through :func:`safe_load`.

    Every MMEngine path that reads a checkpoint (``Runner`` ``load_from`` and
    ``resume``, ``init_cfg=dict(type='Pretrained')``, ``CheckpointHook``) goes
    through ``CheckpointLoader``, whose empty prefix ``''`` matches local paths.
    Re-registering that prefix swaps the loader for all of them. Idempotent.
    URL schemes keep MMEngine's loaders (``weights_only=True`` under torch >= 2.6).
    """
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safe, force=True)


def check_state_dict_tensors(state_dict, source):
    """Raise ``TypeError`` naming ``source`` and every key whose value is not a tensor."""
    bad = [f'{k!r} ({type(v).__name__})' for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        shown = ', '.join(bad[:5]) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
        raise TypeError(f'checkpoint {source} is not a weights file: the values of its state dict '
                        f'must all be tensors, but {len(bad)} are not: {shown}')


def load_state_dict_from_checkpoint(path):
    """Return the model weights stored in a checkpoint.

    The weights are taken from the first of ``'state_dict'``, ``'model'``,
    ``'module'`` present in the checkpoint, else the checkpoint itself is the
    weights dict. A leading ``module.`` (from ``DistributedDataParallel``) is
    stripped from the keys. Local files load through :func:`safe_load`, anything
    else (``https://``, ``open-mmlab://`` …) through MMEngine's ``CheckpointLoader``.

    Args:
        path (str): Checkpoint path or URL.

    Returns:
        OrderedDict[str, Tensor]: Parameter name to tensor.

    Raises:
        RuntimeError: the file is empty or ends early (truncated download).
        TypeError: the checkpoint is not a dict, its weights entry is not a dict, or a
            weight is not a tensor (the message names the file, the key and its type).
    """
    local = osp.expanduser(path)
    if osp.isfile(local):
        if osp.getsize(local) == 0:
            raise RuntimeError(f'checkpoint {path} is an empty file (0 bytes); download or save it again')
        try:
            checkpoint = safe_load(local)
        except EOFError as error:
            raise RuntimeError(f'checkpoint {path} ends early ({osp.getsize(local)} bytes read); '
                               'it is truncated, download or save it again') from error
    else:
        checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    if not isinstance(checkpoint, dict):
        raise TypeError(f'{path} holds a {type(checkpoint).__name__}, expected a dict')
    for key in _STATE_DICT_KEYS:
        if key in checkpoint:
            checkpoint = checkpoint[key]
            if not isinstance(checkpoint, dict):
                raise TypeError(f'checkpoint {path}: its {key!r} entry is a {type(checkpoint).__name__}, '
                                'expected a dict of tensors')
            break
    check_state_dict_tensors(checkpoint, path)
    return OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v)
                       for k, v in checkpoint.items())
