import torch

from mmsparse.ops.fibottention import (LAYOUTS, MODES, SHUFFLES, fibottention_attention,
                                       fibottention_attention_traced, fibottention_pattern)
from mmsparse.registry import MODELS
from .dense import DenseAttention


def check_fibottention_options(**options):
    """Refuse a ``mode``, ``shuffle`` or ``offset_layout`` (keyword name = option) that is not supported."""
    allowed = dict(mode=MODES, shuffle=SHUFFLES, offset_layout=LAYOUTS)
    for name, value in options.items():
        if value not in allowed[name]:
            raise ValueError(f'{name}={value!r} is not supported; expected one of {allowed[name]}')


@MODELS.register_module()
class Fibottention2d(DenseAttention):
    """Multi-head self-attention with Fibottention (arXiv 2406.19391) on a 2-D map.

    The layer's head-shuffled Wythoff/Fibonacci pattern (:mod:`mmsparse.ops.fibottention`)
    over the flattened grid is built per grid and cached per device (the op derives its
    neighbour index, and for short sequences its dense mask, from it once). Under a dynamic
    ``torch.export`` (a symbolic grid, e.g. ``tools/deployment/pytorch2onnx.py --dynamic``)
    the dense mask is built in the graph from the grid size
    (:func:`~mmsparse.ops.fibottention.fibottention_attention_traced`, the torch backend
    whatever ``backend`` says), so that one graph serves every size.
    :meth:`forward` attends the ``H x W`` map without a CLS token (a query whose pattern
    keeps no key in ``'sparse'`` mode outputs ``proj`` of zeros);
    :class:`~mmsparse.models.backbones.FibottentionViT` calls
    :meth:`forward_tokens` with its CLS token, whose row and column are kept, as in
    the official model. Parameters are those of :class:`DenseAttention`.
    Registered as ``mmsparse.Fibottention2d``.

    Args:
        embed_dims (int): channels C.
        num_heads (int): heads; must divide C.
        layer_id (int): block index, the head-shuffle seed with
            ``shuffle='per_layer'``. Defaults to 0.
        mode (str): ``'sparse'`` (masked logits -inf) or ``'official'`` (masked
            logits 0, the official code's multiplicative mask). Defaults to ``'sparse'``.
        shuffle (str): ``'per_layer'``, ``'shared'`` or ``'none'``. Defaults to
            ``'per_layer'``.
        offset_layout (str): ``'1d'`` (official offsets on the flattened index) or
            ``'2d'`` (axial offsets; ablation). Defaults to ``'1d'``.
        qkv_bias (bool): bias of the qkv projection. Defaults to True.
        backend (str, optional): op backend, see
            :func:`mmsparse.ops.fibottention_attention`. Defaults to None.

    Shape:
        (N, H, W, C) -> (N, H, W, C)
    """

    def __init__(self, embed_dims, num_heads, layer_id=0, mode='sparse', shuffle='per_layer',
                 offset_layout='1d', qkv_bias=True, backend=None):
        check_fibottention_options(mode=mode, shuffle=shuffle, offset_layout=offset_layout)
        super().__init__(embed_dims, num_heads, qkv_bias=qkv_bias)
        self.layer_id = layer_id
        self.mode = mode
        self.shuffle = shuffle
        self.offset_layout = offset_layout
        self.backend = backend
        self._patterns = {}

    def pattern(self, grid_size, device):
        """This layer's :class:`~mmsparse.ops.fibottention.FibPattern` on ``device`` (cached)."""
        # Plain ints: under torch.jit.trace (FLOP counting) sizes arrive as traced values,
        # which would miss the cache and rebuild the pattern inside the trace.
        grid_size = tuple(int(s) for s in grid_size)
        key = (grid_size, str(device))
        if key not in self._patterns:
            self._patterns[key] = fibottention_pattern(grid_size, self.num_heads, self.layer_id,
                                                       self.offset_layout, self.shuffle).to(device)
        return self._patterns[key]

    def attend(self, q, k, v, grid_size, with_cls):
        if torch.compiler.is_exporting() and not all(isinstance(s, int) for s in grid_size):
            # A dynamic torch.export: the pattern of a symbolic grid is built in the graph.
            return fibottention_attention_traced(q, k, v, grid_size, self.layer_id, self.offset_layout,
                                                 self.shuffle, mode=self.mode, with_cls=with_cls)
        return fibottention_attention(q, k, v, self.pattern(grid_size, q.device), mode=self.mode,
                                      with_cls=with_cls, backend=self.backend)

    def extra_repr(self):
        return (f'{super().extra_repr()}, layer_id={self.layer_id}, mode={self.mode}, '
                f'shuffle={self.shuffle}, offset_layout={self.offset_layout}')
