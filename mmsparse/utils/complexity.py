"""FLOPs and parameters of a model, with every attention op counted.

MMEngine's complexity analysis (:class:`mmengine.analysis.FlopAnalyzer`, a jit-trace
port of fvcore) has handles for convolutions, matmuls and norms only: it counts
``aten::scaled_dot_product_attention`` and the mmsparse ops as 0, so a sparse ViT and
its dense twin report the same FLOPs. This module adds one handle per attention op of
the trace and :func:`model_complexity`, which traces a bare backbone, an mmseg
segmentor or an mmdet detector and breaks the counts down per module type.

Counting convention (MMEngine / fvcore): **one multiply-add is one FLOP**; a matmul of
``(n, k) @ (k, m)`` costs ``n*k*m``. An attention op costs, per kept (query, key)
entry, ``d_qk`` for the logit and ``d_v`` for the weighted sum of values, i.e.
``entries * (d_qk + d_v)`` summed over heads; softmax, scaling and bias adds are
elementwise and not counted, as fvcore ignores elementwise ops. A mean over ``n``
elements costs ``n`` (the convention of MMEngine's ``adaptive_avg_pool2d`` handle).
Each mmsparse op is counted from its arguments and its pattern alone, never from the
algorithm a backend runs, so the reference and the Triton kernels count the same (the
Triton ``triton_op`` of each op, ``mmsparse::<op>_triton``, has a handle too):

* ``neighborhood_attention_2d``: ``k*k`` keys per query (NATTEN windows never pad);
* ``bi_level_routing_attention``: region means of ``q`` and ``k`` and the
  region-to-region logits (routing, all heads at once), then ``topk`` regions of
  ``H*W / n_win**2`` tokens per query;
* ``grid_attention``: the real tokens of the query's ``G x G`` window (clipped at the
  bottom/right border), for the real queries only;
* ``global_attention``: every key token (the pooled cells) per query;
* ``cell_average_pool``: one FLOP per input element (0 for ``ratio=1``, the identity);
* ``fibottention_attention``: the head's kept entries of the pattern (the CLS row and
  column included); ``mode='official'`` adds, per row with masked keys, the one extra
  key that stands for them (``d_v``) and, per head, the sum of all values (``T*d_v``).

``aten::scaled_dot_product_attention`` counts ``L*S`` entries per batch and head,
fewer when the node tells which entries are kept: ``is_causal`` (the top-left
aligned lower triangle, as PyTorch) or a boolean ``attn_mask`` that the trace holds as
a constant (or computes from constants only).

The handles read an op's arguments by the names of its schema. Non-tensor arguments and
the Fibottention pattern tensors must be determined by the trace: a value computed from
constants and shapes only (a pattern built, or moved, inside the traced call) is
recomputed from the graph, in-place writes included; a handle whose argument depends on
the data raises rather than guess. ``torch.utils.flop_counter`` counts a multiply-add as
2 FLOPs: halve its numbers to compare.
"""
import math
import sys
from collections import Counter
from functools import cmp_to_key, partial
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape
from torch import nn

__all__ = ['model_complexity', 'ModelComplexity', 'ModuleTypeCount', 'ATTENTION_FLOP_HANDLES',
           'attention_flop_handles', 'format_complexity_table', 'causal_entries', 'window_pairs',
           'fibottention_entries']

_UNKNOWN = object()  # a traced value whose content the graph does not determine


class ModuleTypeCount(NamedTuple):
    """Totals of all modules of one class: ``modules`` instances, their own FLOPs and parameters."""
    modules: int
    flops: int
    params: int


class ModelComplexity(NamedTuple):
    """Result of :func:`model_complexity`.

    Attributes:
        flops (int): FLOPs of one forward pass (one multiply-add = 1 FLOP).
        params (int): parameters of the network that runs (each tensor once).
        by_module_type (dict[str, ModuleTypeCount]): per module class name, the
            FLOPs of the ops each module runs itself (not in a child module) and its
            own parameters; the entries sum to ``flops`` and ``params``.
        by_operator (dict[str, int]): FLOPs per traced operator, e.g. ``'linear'``,
            ``'neighborhood_attention_2d'``, ``'scaled_dot_product_attention'``.
        unsupported_ops (dict[str, int]): traced operators without a handle (counted
            as 0) and how often they ran.
        input_shape (tuple[int, int, int]): the requested ``(C, H, W)`` image.
        traced_shape (tuple[int, ...]): the ``(B, C, H, W)`` batch that was traced, after
            a data preprocessor's padding (e.g. to a detector's size divisor).
    """
    flops: int
    params: int
    by_module_type: Dict[str, ModuleTypeCount]
    by_operator: Dict[str, int]
    unsupported_ops: Dict[str, int]
    input_shape: Tuple[int, int, int]
    traced_shape: Tuple[int, ...]


# ---------------------------------------------------------------------------------------
# Reading a traced node


def _named_inputs(node):
    """``{argument name: torch._C.Value}`` of a traced op, by its schema."""
    schema = torch._C.parse_schema(node.schema())
    return {arg.name: value for arg, value in zip(schema.arguments, node.inputs())}


def _argument(node, name):
    """The traced input ``name`` of ``node``; a missing name is an error that shows the schema."""
    inputs = _named_inputs(node)
    if name not in inputs:
        raise KeyError(f'{node.kind()} has no argument {name!r}; its schema is {node.schema()}')
    return inputs[name]


_MAX_FOLDED_NODES = 4096  # constant subgraphs (patterns, masks) are small; a larger one is not folded


def _node_key(node):
    # Value names are unique within a graph; the wrappers of nodes are not stable objects.
    return tuple(o.debugName() for o in node.outputs()) or (node.kind(), str(node))


def _alias_kind(user, value):
    """``'write'``, ``'view'`` or None: how ``user`` aliases ``value`` (its schema annotation)."""
    if user.kind() in ('prim::ListUnpack', 'prim::TupleUnpack'):  # e.g. the views of aten::unbind
        return 'view'
    if user.kind().startswith('prim::'):  # list and tuple construction: no alias
        return None
    try:
        schema = torch._C.parse_schema(user.schema())
    except RuntimeError:  # unknown aliasing: assume a write, so that the value is not folded blindly
        return 'write'
    kinds = {('write' if arg.alias_info.is_write else 'view')
             for arg, v in zip(schema.arguments, user.inputs())
             if arg.alias_info is not None and v.unique() == value.unique()}
    return 'write' if 'write' in kinds else kinds.pop() if kinds else None


def _writes_into(user, value, consumer, depth=0):
    """Whether ``user``, before ``consumer``, writes ``value`` in place, itself or through its views."""
    if not user.isBefore(consumer) or depth > 16:
        return False
    kind = _alias_kind(user, value)
    if kind != 'view':
        return kind == 'write'
    return any(_writes_into(use.user, out, consumer, depth + 1) for out in user.outputs() for use in out.uses())


def _is_shape_read(node):
    """``aten::size`` of a tensor whose traced type has complete sizes: an int the graph knows."""
    return node.kind() == 'aten::size' and get_shape(next(node.inputs())) is not None


def _needed_nodes(value, consumer):
    """The nodes that compute ``value`` as ``consumer`` reads it, in graph order, or None.

    Includes every earlier view or in-place write of a value involved (a pattern is
    typically built as ``zeros`` then ``copy_`` into slices), so running them in order
    reproduces the content. None if the content depends on the model's input or
    parameters (other than their shapes).
    """
    nodes, stack = {}, [value.node()]
    while stack:
        node = stack.pop()
        key = _node_key(node)
        if key in nodes:
            continue
        if node.kind() == 'prim::Param' or len(nodes) >= _MAX_FOLDED_NODES:
            return None
        nodes[key] = node
        if not _is_shape_read(node):
            stack.extend(v.node() for v in node.inputs())
        for out in node.outputs():
            stack.extend(use.user for use in out.uses() if _writes_into(use.user, out, consumer))
    ordered = list(nodes.values())
    ordered.sort(key=cmp_to_key(lambda a, b: -1 if a.isBefore(b) else (1 if b.isBefore(a) else 0)))
    return ordered


def _run_node(node, env):
    """Run one traced node on known contents: a list of its outputs' contents."""
    kind = node.kind()
    inputs = list(node.inputs())
    if kind == 'prim::Constant':
        return [node.output().toIValue()]
    if _is_shape_read(node):
        shape = get_shape(inputs[0])
        return [shape[env[inputs[1].debugName()]] if len(inputs) > 1 else list(shape)]
    args = [env[v.debugName()] for v in inputs]
    if kind in ('prim::ListConstruct', 'prim::TupleConstruct'):
        return [list(args)]
    if kind in ('prim::ListUnpack', 'prim::TupleUnpack'):
        return list(args[0])
    if kind == 'prim::NumToTensor':
        return [torch.tensor(args[0])]
    if not kind.startswith('aten::'):
        raise NotImplementedError(kind)
    schema = torch._C.parse_schema(node.schema())
    positional = [a for arg, a in zip(schema.arguments, args) if not arg.kwarg_only]
    keywords = {arg.name: a for arg, a in zip(schema.arguments, args) if arg.kwarg_only}
    packet = getattr(torch.ops.aten, kind[len('aten::'):])
    result = getattr(packet, schema.overload_name or 'default')(*positional, **keywords)
    return list(result) if node.outputsSize() > 1 else [result]


def _evaluate(value, consumer):
    """The content of a traced value as ``consumer`` reads it, if constants determine it, else ``_UNKNOWN``.

    Re-runs the constant part of the graph that builds it (``prim::Constant``, shape
    reads, list construction and ``aten::`` ops, in-place writes included, in graph
    order): e.g. the ``aten::to`` that moves a cached pattern, a pattern built inside
    the traced call, or the ``arange``/compare chain of a mask. Anything that depends
    on the content of the model's input or parameters is unknown.
    """
    nodes = _needed_nodes(value, consumer)
    if nodes is None:
        return _UNKNOWN
    env = {}
    try:
        for node in nodes:
            env.update(zip((o.debugName() for o in node.outputs()), _run_node(node, env)))
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError, NotImplementedError):
        return _UNKNOWN  # a node that does not run eagerly from its traced arguments
    return env[value.debugName()]


def _constant(node, name):
    """The content of argument ``name``; an op argument that is not constant is an error."""
    content = _evaluate(_argument(node, name), node)
    if content is _UNKNOWN:
        raise ValueError(f'the FLOPs of {node.kind()} depend on its argument {name!r}, which the '
                         'trace does not hold as a constant')
    return content


def _shape(node, name):
    shape = get_shape(_argument(node, name))
    if shape is None:
        raise ValueError(f'{node.kind()}: the trace has no complete shape for argument {name!r}')
    return tuple(shape)


def _node_handle(count):
    """Turn ``count(node) -> int`` into an MMEngine handle ``(inputs, outputs) -> int``.

    MMEngine passes a node's input and output values; the node itself gives the schema
    (argument names), so the handles read arguments by name, not position.
    """

    def handle(inputs, outputs):
        return int(count(outputs[0].node()))

    handle.__name__ = f'{count.__name__}_handle'
    handle.__doc__ = count.__doc__
    return handle


# ---------------------------------------------------------------------------------------
# Closed forms: the FLOPs of each op from its shapes (shared by the handles and the tests)


def causal_entries(length, keys):
    """Kept entries of PyTorch's causal mask (``tril`` of an ``L x S`` matrix): ``sum min(i+1, S)``."""
    if length <= keys:
        return length * (length + 1) // 2
    return keys * (keys + 1) // 2 + (length - keys) * keys


def window_pairs(size, window):
    """``sum_w |w|**2`` over the windows of ``window`` cells tiling ``size`` (the last clipped)."""
    full, rest = divmod(size, window)
    return full * window * window + rest * rest


def fibottention_entries(displacements, counts, grid, with_cls=True):
    """Kept entries of a Fibottention pattern, per head and per query row.

    Args:
        displacements (Tensor): (heads, K, 2) signed ``(dy, dx)`` of the pattern
            (:class:`~mmsparse.ops.fibottention.FibPattern`); rows past ``counts`` are padding.
        counts (Tensor): (heads, ) valid displacements per head.
        grid (Sequence[int]): ``(gh, gw)`` token grid; key ``(y+dy, x+dx)`` is kept
            when it lies inside it.
        with_cls (bool): a CLS token whose row (all ``T`` keys) and column (every
            patch row keeps it) are kept. Defaults to True.

    Returns:
        Tensor: (heads, T) int64 kept keys of every query row, ``T = gh*gw + with_cls``.
    """
    gh, gw = (int(s) for s in grid)
    disp = torch.as_tensor(displacements).to(device='cpu', dtype=torch.int64)
    counts = torch.as_tensor(counts).to(device='cpu', dtype=torch.int64)
    rows = torch.arange(gh * gw)
    y = (rows // gw)[None, :, None] + disp[:, None, :, 0]
    x = (rows % gw)[None, :, None] + disp[:, None, :, 1]
    in_table = torch.arange(disp.shape[1]) < counts[:, None]
    kept = ((y >= 0) & (y < gh) & (x >= 0) & (x < gw) & in_table[:, None, :]).sum(-1)
    if not with_cls:
        return kept
    cls_row = torch.full((kept.shape[0], 1), gh * gw + 1, dtype=torch.int64)
    return torch.cat([cls_row, kept + 1], dim=1)


def sdpa_flops(node):
    """``aten::scaled_dot_product_attention``: kept (query, key) entries times ``(E + Ev)``."""
    *batch, length, d_qk = _shape(node, 'query')
    keys = _shape(node, 'key')[-2]
    d_v = _shape(node, 'value')[-1]
    groups = math.prod(batch)
    mask = _evaluate(_argument(node, 'attn_mask'), node)
    if _constant(node, 'is_causal'):
        entries = groups * causal_entries(length, keys)
    elif isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        entries = int(torch.broadcast_to(mask, (*batch, length, keys)).sum())
    else:  # no mask, a float (additive) mask or one computed from the input: every entry
        entries = groups * length * keys
    return entries * (d_qk + d_v)


def na2d_flops(node):
    """``mmsparse::neighborhood_attention_2d``: ``kernel_size**2`` keys per query."""
    b, heads, hq, wq, d_qk = _shape(node, 'q')
    d_v = _shape(node, 'v')[-1]
    kernel = _constant(node, 'kernel_size')
    return b * heads * hq * wq * kernel * kernel * (d_qk + d_v)


def bra_flops(node):
    """``mmsparse::bi_level_routing_attention``: routing, then ``topk`` regions per query."""
    n, _, _, c_qk = _shape(node, 'q')
    regions = _constant(node, 'n_win')**2
    region_logits = n * regions * regions * c_qk             # one graph for all heads
    return region_logits + _bra_means_and_attention(node, _constant(node, 'topk'))


def bra_triton_flops(node):
    """``mmsparse::bi_level_routing_attention_triton``: the attention over the routed regions
    and the region means of the routing, which runs as aten ops before it: the trace's
    ``aten::matmul`` counts the region logits (``aten::mean`` has no MMEngine handle), so the
    total equals :func:`bra_flops`."""
    return _bra_means_and_attention(node, _shape(node, 'region_index')[-1])


def _bra_means_and_attention(node, topk):
    n, height, width, c_qk = _shape(node, 'q')
    c_v = _shape(node, 'v')[-1]
    regions = _constant(node, 'n_win')**2
    region_means = 2 * n * height * width * c_qk             # q and k, every element once
    entries = n * height * width * topk * (height * width // regions)   # summed over heads below
    return region_means + entries * (c_qk + c_v)


def grid_attention_flops(node):
    """``mmsparse::grid_attention``: the real tokens of each ``G x G`` window, real queries only."""
    b, c, height, width = _shape(node, 'q')
    g = _constant(node, 'grid_size')
    # Keys and queries of a window are the same tokens: (window size)**2 entries, which
    # factorises over rows and columns.
    return b * window_pairs(height, g) * window_pairs(width, g) * 2 * c


def global_attention_flops(node):
    """``mmsparse::global_attention``: every (pooled) key per query."""
    b, c, height, width = _shape(node, 'q')
    key_tokens = math.prod(_shape(node, 'k')[2:])
    return b * height * width * key_tokens * 2 * c


def cell_average_pool_flops(node):
    """``mmsparse::cell_average_pool``: one FLOP per input element (the identity for ratio 1)."""
    return 0 if _constant(node, 'ratio') == 1 else math.prod(_shape(node, 'x'))


def fibottention_flops(node):
    """``mmsparse::fibottention_attention``: the pattern's kept entries per head (and CLS)."""
    b, heads, tokens, d = _shape(node, 'q')
    pattern = [_constant(node, name) for name in ('displacements', 'counts', 'grid')]
    with_cls = bool(_constant(node, 'with_cls'))
    kept = fibottention_entries(*pattern, with_cls=with_cls)
    if tuple(kept.shape) != (heads, tokens):
        raise ValueError(f'{node.kind()}: the pattern covers {tuple(kept.shape)} (heads, tokens) but '
                         f'q has {heads} heads of {tokens} tokens')
    flops = b * int(kept.sum()) * 2 * d
    if _constant(node, 'mode') == 'official':
        rows_with_masked = int((kept < tokens).sum())
        flops += b * (rows_with_masked * d + heads * tokens * d)
    return flops


ATTENTION_FLOP_HANDLES = {
    'aten::scaled_dot_product_attention': _node_handle(sdpa_flops),
    'mmsparse::neighborhood_attention_2d': _node_handle(na2d_flops),
    'mmsparse::neighborhood_attention_2d_triton': _node_handle(na2d_flops),   # the same arguments
    'mmsparse::bi_level_routing_attention': _node_handle(bra_flops),
    'mmsparse::bi_level_routing_attention_triton': _node_handle(bra_triton_flops),
    'mmsparse::grid_attention': _node_handle(grid_attention_flops),
    'mmsparse::global_attention': _node_handle(global_attention_flops),
    'mmsparse::cell_average_pool': _node_handle(cell_average_pool_flops),
    'mmsparse::fibottention_attention': _node_handle(fibottention_flops),
    'mmsparse::fibottention_attention_triton': _node_handle(fibottention_flops),   # the same arguments
}


def attention_flop_handles():
    """A copy of :data:`ATTENTION_FLOP_HANDLES`: ``{op name: MMEngine handle}``.

    Example::

        FlopAnalyzer(model, inputs).set_op_handle(**attention_flop_handles())
    """
    return dict(ATTENTION_FLOP_HANDLES)


# ---------------------------------------------------------------------------------------
# Model inputs and the per-module-type breakdown


def _image_shape(input_shape):
    shape = tuple(input_shape)
    if len(shape) == 2:
        shape = (3, ) + shape
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f'input_shape={input_shape!r} must be (H, W) or (C, H, W) positive ints')
    return shape


def _task(model):
    """``'seg'`` for an mmseg segmentor, ``'det'`` for an mmdet detector, else None."""
    if 'mmseg' in sys.modules:  # a segmentor cannot exist unless mmseg was imported
        from mmseg.models import BaseSegmentor
        if isinstance(model, BaseSegmentor):
            return 'seg'
    if 'mmdet' in sys.modules:
        from mmdet.models import BaseDetector
        if isinstance(model, BaseDetector):
            return 'det'
    return None


def _data_samples(task, height, width, batch_size):
    """Data samples with the metainfo the tensor forward and the data preprocessor read."""
    if task == 'seg':
        from mmseg.structures import SegDataSample as sample_type
    else:
        from mmdet.structures import DetDataSample as sample_type
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                scale_factor=(1.0, 1.0), padding_size=[0, 0, 0, 0])
    return [sample_type(metainfo=meta) for _ in range(batch_size)]


def _own_counts(model, analyzer, excluded):
    """Per module class: instances, FLOPs of the ops it runs itself, its own parameters."""
    totals = analyzer.by_module()
    names = [name for name, _ in model.named_modules()]     # canonical names, each module once
    modules = dict(model.named_modules())
    children = Counter()
    for name in names:
        if name:
            children[name.rpartition('.')[0]] += totals.get(name, 0)
    seen_params = set()
    by_type = {}
    for name in names:
        if any(name == e or name.startswith(e + '.') for e in excluded):
            continue
        module = modules[name]
        params = 0
        for p in module.parameters(recurse=False):
            if id(p) not in seen_params:
                seen_params.add(id(p))
                params += p.numel()
        own_flops = totals.get(name, 0) - children[name]
        kind = type(module).__name__
        count = by_type.get(kind, ModuleTypeCount(0, 0, 0))
        by_type[kind] = ModuleTypeCount(count.modules + 1, count.flops + own_flops, count.params + params)
    return dict(sorted(by_type.items(), key=lambda item: (-item[1].flops, -item[1].params, item[0])))


def model_complexity(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
                     extra_handles: Optional[dict] = None) -> ModelComplexity:
    """FLOPs and parameters of one forward pass, attention ops included.

    A bare module (e.g. a backbone) is traced on ``model(image)``. An mmseg segmentor
    or an mmdet detector is traced on its tensor forward, ``model(inputs,
    data_samples, mode='tensor')``, after its data preprocessor, as the stock
    ``get_flops.py`` tools do (so a detector's inputs are padded to its size divisor);
    a segmentor's ``auxiliary_head`` is left out of the parameters, as the stock
    mmseg tool does, since it runs in training only. The model runs in eval mode
    under ``torch.no_grad`` on the device of its parameters; its training flag is
    restored afterwards. SyncBN layers must be converted first (e.g.
    ``mmengine.model.revert_sync_batchnorm``) on a machine without a process group.

    Args:
        model (nn.Module): the model.
        input_shape (Sequence[int]): ``(H, W)`` or ``(C, H, W)``; C defaults to 3.
        batch_size (int): images per traced batch. Defaults to 1.
        extra_handles (dict, optional): more ``{op name: handle}`` (MMEngine handle
            signature), or ``{op name: None}`` to ignore an op. Defaults to None.

    Returns:
        ModelComplexity: totals, per module type and per operator.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'batch_size={batch_size!r} must be a positive int')
    shape = _image_shape(input_shape)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device('cpu')
    task = _task(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            images = torch.rand(batch_size, *shape, device=device) * 255
            if task is None:
                inputs, excluded = (images, ), ()
            else:
                data = model.data_preprocessor(
                    dict(inputs=list(images), data_samples=_data_samples(task, *shape[1:], batch_size)), False)
                inputs = (data['inputs'], )
                # The tensor forward, as the stock tools trace it; an instance attribute
                # shadows the method for the trace and is deleted afterwards.
                model.forward = partial(model.forward, data_samples=data['data_samples'], mode='tensor')
                excluded = ('auxiliary_head', ) if task == 'seg' else ()
            analyzer = FlopAnalyzer(model, inputs)
            analyzer.set_op_handle(**attention_flop_handles(), **(extra_handles or {}))
            analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            analyzer.tracer_warnings('none')
            flops = analyzer.total()
            by_type = _own_counts(model, analyzer, excluded)
            by_operator = dict(analyzer.by_operator())
            unsupported = dict(analyzer.unsupported_ops())
    finally:
        model.__dict__.pop('forward', None)
        model.train(was_training)
    return ModelComplexity(flops=int(flops), params=sum(c.params for c in by_type.values()),
                           by_module_type=by_type, by_operator={k: int(v) for k, v in by_operator.items()},
                           unsupported_ops=unsupported, input_shape=shape,
                           traced_shape=tuple(inputs[0].shape))


def format_complexity_table(result: ModelComplexity, max_rows: Optional[int] = None) -> str:
    """A markdown-style table of :attr:`ModelComplexity.by_module_type` with a total row.

    Args:
        result (ModelComplexity): from :func:`model_complexity`.
        max_rows (int, optional): keep the module types with the most FLOPs and fold
            the rest into one ``(others)`` row. Defaults to None (every type).

    Returns:
        str: the table; sizes as ``12.3M`` / ``4.56G`` (MMEngine's format) next to exact counts.
    """
    from mmengine.analysis.print_helper import _format_size
    rows = list(result.by_module_type.items())
    if max_rows is not None and len(rows) > max_rows:
        rest = rows[max_rows:]
        rows = rows[:max_rows] + [('(others)', ModuleTypeCount(*(sum(c[i] for _, c in rest) for i in range(3))))]
    rows.append(('total', ModuleTypeCount(sum(c.modules for _, c in rows), result.flops, result.params)))
    header = ('module type', '#modules', '#params', '#flops', 'params', 'flops')
    body = [(name, str(c.modules), _format_size(c.params), _format_size(c.flops), str(c.params), str(c.flops))
            for name, c in rows]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]

    def line(cells):
        return '| ' + ' | '.join(c.ljust(w) for c, w in zip(cells, widths)) + ' |'

    rule = '|' + '|'.join(':' + '-' * (w + 1) for w in widths) + '|'
    return '\n'.join([line(header), rule] + [line(r) for r in body])
