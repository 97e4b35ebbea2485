"""Look inside an op call: record the inputs of op calls, and get their attention probabilities.

Tools that explain a model (``tools/analysis_tools/visualize_attention.py``) need what an
op saw, not a re-implementation of it. Every public op reports its call to
:func:`record_call` (a no-op unless a :func:`record_op_calls` block is active), and every
op registers, with :func:`register_probabilities`, the function that returns the softmax
probabilities its reference computes for selected queries.

Contract of a probability function ``fn(queries, **arguments)``:

* ``arguments`` are the keyword arguments the op recorded (its public arguments, tensors
  as passed, ``scale`` already resolved);
* ``queries`` is a 1-D LongTensor of flat, row-major query indices into the op's query
  map (or sequence);
* it returns ``(probs, key_index)``: ``probs`` (B, heads, Q, K) float and ``key_index``
  (B, heads, Q, K) long, the flat row-major index of each entry's key in the op's key
  map (or sequence), -1 for an entry that is not a real key (its probability is 0).
  Every row of ``probs`` sums to 1 over its K entries.
"""
from contextlib import contextmanager
from typing import NamedTuple

_RECORDERS = []
_PROBABILITY_FUNCTIONS = {}


class OpCall(NamedTuple):
    """One call of a public op: its name and the keyword arguments it received."""
    op: str
    arguments: dict


@contextmanager
def record_op_calls():
    """Collect every public op call made inside the block, in call order.

    Example::

        with record_op_calls() as calls:
            backbone(image)
        probs, keys = attention_probabilities(calls[0], torch.tensor([0]))
    """
    calls = []
    _RECORDERS.append(calls)
    try:
        yield calls
    finally:
        _RECORDERS.remove(calls)


def record_call(op, **arguments):
    """Called by every public op with its arguments; cheap when nothing records."""
    if _RECORDERS:
        call = OpCall(op, arguments)
        for calls in _RECORDERS:
            calls.append(call)


def register_probabilities(op):
    """Decorator: register ``fn(queries, **arguments)`` as the probability function of ``op``."""

    def register(fn):
        _PROBABILITY_FUNCTIONS[op] = fn
        return fn

    return register


def attention_probabilities(call, queries):
    """``(probs, key_index)`` of a recorded :class:`OpCall` for ``queries`` (see the module doc)."""
    if call.op not in _PROBABILITY_FUNCTIONS:
        raise ValueError(f'op {call.op!r} has no probability function; ops that have one: '
                         f'{sorted(_PROBABILITY_FUNCTIONS)}')
    return _PROBABILITY_FUNCTIONS[call.op](queries, **call.arguments)


__all__ = ['OpCall', 'record_op_calls', 'record_call', 'register_probabilities', 'attention_probabilities']
