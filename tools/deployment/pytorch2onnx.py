"""Export the backbone (or a whole mmseg segmentor) of a config to ONNX.

::

    python tools/deployment/pytorch2onnx.py CONFIG [CHECKPOINT] --shape H W [--batch N] \\
        [--model backbone|whole] [--dynamic] [--out FILE.onnx] [--opset 18] \\
        [--verify] [--verify-shape H W ...] [--atol 1e-4] [--cfg-options key=value ...]

``--model backbone`` (default) exports ``cfg.model.backbone``, whose outputs are its
feature maps ``out0 .. outK``; ``--model whole`` exports an mmseg segmentor's tensor
forward ``model._forward(inputs)`` (the decode head's logits, before resizing). The
model is exported in eval mode on CPU, with ``MMSPARSE_ATTN_BACKEND=torch``.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript),
on the ``nn.Module`` itself. mmsparse's ops are ``torch.library`` custom ops that ONNX
does not know; they call their pure-PyTorch reference while
``torch.onnx.is_in_onnx_export()`` is True, which holds inside ``torch.onnx.export``
during its first capture, ``torch.export.export(strict=False)`` (and in the TorchScript
exporter), but not in its strict (TorchDynamo) fallback nor in a ``torch.export.export``
called beforehand; so the tool passes the module, never an ``ExportedProgram``, and
reports a failed non-strict capture as such.

``--dynamic`` marks the batch, height and width of the input ``Dim.AUTO``
(``torch.export`` fixes axes of size 1, so a dynamic batch needs ``--batch`` >= 2):
``torch.export`` keeps each dynamic unless the model's shape logic specialises it,
and records the range of sizes its guards allow; the tool prints that range per
axis (``fixed`` when specialised). ``--verify`` runs the ``.onnx`` file in
onnxruntime (CPU) at ``--shape`` and at each ``--verify-shape`` (dynamic exports
only) and fails when the largest absolute difference to PyTorch exceeds ``--atol``.
Shape logic on the sizes is symbolic-friendly: no Python branch on a symbolic size
changes the graph (BiFormer's ``pad_nhwc_to_multiple`` always pads and H-MHSA always
builds its window mask under ``torch.export``), and size arithmetic avoids negative
floor division, which ONNX's truncating integer division would get wrong. So BiFormer,
NAT, HAT-Net and FibottentionViT export one graph for all sizes
(tests/test_tools/test_onnx_export.py checks a second size that needs padding where the
traced one did not). FibottentionViT's key pattern, a Python function of the token grid,
is then built in the graph from the symbolic grid as a dense mask
(``fibottention_attention_traced`` in ``mmsparse/ops/fibottention``), so the graph holds
``(heads, T, T)`` masks and logits at every size (the dense torch algorithm). The printed
range can be narrower than the valid one: HAT-Net traced at sides <= 112 reports
height <= 112, a guard on its stage-3 window count of 1 (the graph was checked at
160x48; traced at 128x128 both axes are unbounded).
"""
import argparse
import math
import os
import os.path as osp
import sys

import torch
from mmengine.config import Config, DictAction

try:
    from mmsparse.utils.builders import MODEL_PARTS, build_model
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    from mmsparse.utils.builders import MODEL_PARTS, build_model

AXES = ('batch', 'height', 'width')


def positive_int(text):
    """argparse type of a size: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f'{text!r} is not an int >= 1')
    return value


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='an mmseg or mmdet config whose model has a backbone')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='weights to load (a full-model checkpoint or backbone weights); '
                        'default: the random init of the config')
    parser.add_argument('--shape', type=positive_int, nargs=2, required=True, metavar=('H', 'W'),
                        help='input height and width of the traced example')
    parser.add_argument('--batch', type=positive_int, default=1, help='batch of the traced example (default 1)')
    parser.add_argument('--model', choices=MODEL_PARTS, default='backbone',
                        help='backbone (default) or whole (mmseg segmentors: the tensor forward)')
    parser.add_argument('--dynamic', action='store_true', help='dynamic batch, height and width axes')
    parser.add_argument('--out', default=None, help='output file (default: <config name>_<model>.onnx)')
    parser.add_argument('--opset', type=positive_int, default=18, help='ONNX opset (default 18)')
    parser.add_argument('--verify', action='store_true', help='compare onnxruntime (CPU) with PyTorch')
    parser.add_argument('--verify-shape', type=positive_int, nargs=2, action='append', default=[],
                        metavar=('H', 'W'), help='more input sizes to verify (with --dynamic); repeatable')
    parser.add_argument('--atol', type=float, default=1e-4, help='largest max-abs difference (default 1e-4)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, as key=value pairs merged into it')
    return parser


def parse_args(argv=None):
    """Parse and check the command line (errors exit 2 naming the argument)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verify_shape and not args.dynamic:
        parser.error(f'--verify-shape {args.verify_shape} needs --dynamic: a static export runs at '
                     f'--shape {args.shape} only')
    if args.verify_shape and not args.verify:
        parser.error('--verify-shape needs --verify')
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        parser.error(f'checkpoint {args.checkpoint!r} does not exist')
    if args.atol < 0:
        parser.error(f'--atol={args.atol} must be >= 0')
    return args


def _flat_outputs(out):
    """The tensors of a backbone's tuple / list output or a single tensor, as a list."""
    return list(out) if isinstance(out, (tuple, list)) else [out]


def dynamic_ranges(program):
    """What ``torch.export`` kept dynamic: ``{axis: (low, high) | int}`` of the input's axes.

    ``high`` is None when unbounded; an int value means the axis was specialised.
    """
    exported = program.exported_program
    user_inputs = exported.graph_signature.user_inputs
    placeholder = next(n for n in exported.graph.nodes if n.op == 'placeholder' and n.name in user_inputs)
    shape = placeholder.meta['val'].shape
    ranges = {}
    for axis, size in zip(AXES, (shape[0], shape[2], shape[3])):
        if isinstance(size, int):
            ranges[axis] = size
            continue
        bound = exported.range_constraints[size.node.expr]
        upper = None if math.isinf(float(bound.upper)) else int(bound.upper)
        ranges[axis] = (int(bound.lower), upper)
    return ranges


def export(model, shape, out, batch=1, dynamic=False, opset=18):
    """Export ``model`` on a ``(batch, 3, H, W)`` example to ``out``.

    Args:
        model (nn.Module): in eval mode, on CPU.
        shape (tuple[int, int]): ``(H, W)`` of the traced example.
        out (str): the ``.onnx`` path.
        batch (int): batch of the example. Defaults to 1.
        dynamic (bool): dynamic batch, height and width. Defaults to False.
        opset (int): ONNX opset. Defaults to 18.

    Returns:
        dict | None: :func:`dynamic_ranges` with ``dynamic``, else None.
    """
    example = torch.randn(batch, 3, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        n_out = len(_flat_outputs(model(example)))
    auto = torch.export.Dim.AUTO
    try:
        program = torch.onnx.export(
            model, (example, ), dynamo=True, opset_version=opset, input_names=['input'],
            output_names=[f'out{i}' for i in range(n_out)],
            dynamic_shapes=({0: auto, 2: auto, 3: auto}, ) if dynamic else None)
    except Exception as error:
        if 'mmsparse.' not in str(error):
            raise
        # The exporter tries torch.export non-strict first, then strict (TorchDynamo), where
        # the ops' inline-reference switch does not fire and their custom-op nodes reach ONNX.
        raise RuntimeError(
            f'ONNX export (dynamic={dynamic}) failed: the non-strict torch.export capture, the only one in '
            'which mmsparse ops inline their PyTorch reference, failed first (its error is the first one '
            'listed below), and the strict fallback kept mmsparse custom ops, which ONNX cannot translate'
            f'\n{error}') from error
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    program.save(out)
    return dynamic_ranges(program) if dynamic else None


def verify(model, path, shapes, batch=1, atol=1e-4):
    """Run ``path`` in onnxruntime (CPU) at each ``(H, W)`` of ``shapes`` and compare with ``model``.

    Returns:
        list[tuple[tuple[int, int], float]]: ``((H, W), max abs difference)`` per shape.

    Raises:
        AssertionError: a difference above ``atol``, an output count or shape mismatch, or
            onnxruntime failing at a shape (a size baked into the graph).
    """
    import onnxruntime  # optional dependency: requirements/onnx.txt

    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    gen = torch.Generator().manual_seed(1)
    results = []
    for shape in shapes:
        x = torch.randn(batch, 3, *shape, generator=gen)
        with torch.no_grad():
            expected = _flat_outputs(model(x))
        try:
            got = session.run(None, {'input': x.numpy()})
        except Exception as error:  # onnxruntime raises its own Fail / InvalidArgument types
            raise AssertionError(f'at {shape}: onnxruntime cannot run the graph: {error}') from error
        if len(got) != len(expected):
            raise AssertionError(f'at {shape}: onnxruntime returned {len(got)} outputs, PyTorch {len(expected)}')
        diff = 0.
        for i, (g, e) in enumerate(zip(got, expected)):
            if tuple(g.shape) != tuple(e.shape):
                raise AssertionError(f'at {shape}: out{i} is {tuple(g.shape)} in onnxruntime, '
                                     f'{tuple(e.shape)} in PyTorch')
            diff = max(diff, float((torch.from_numpy(g) - e).abs().max()))
        if diff > atol:
            raise AssertionError(f'at {shape}: onnxruntime differs from PyTorch by {diff:.3g} > --atol={atol}')
        results.append((tuple(shape), diff))
    return results


def format_ranges(ranges):
    def text(r):
        if isinstance(r, int):
            return f'fixed at {r}'
        return f'dynamic in [{r[0]}, {"inf" if r[1] is None else r[1]}]'

    return ', '.join(f'{axis} {text(r)}' for axis, r in ranges.items())


def run(args):
    """Export (and verify) as ``args`` say; return ``(out path, ranges, verify results)``."""
    # The reference path everywhere, also for the PyTorch side of --verify.
    os.environ['MMSPARSE_ATTN_BACKEND'] = 'torch'
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    model = build_model(cfg, args.model, args.checkpoint)
    out = args.out or f'{osp.splitext(osp.basename(args.config))[0]}_{args.model}.onnx'
    ranges = export(model, tuple(args.shape), out, args.batch, args.dynamic, args.opset)
    print(f'exported {args.model} of {args.config} at {args.batch}x3x{args.shape[0]}x{args.shape[1]} to {out}')
    if ranges is not None:
        print(f'input axes: {format_ranges(ranges)}')
    results = None
    if args.verify:
        results = verify(model, out, [tuple(args.shape)] + [tuple(s) for s in args.verify_shape],
                         args.batch, args.atol)
        for shape, diff in results:
            print(f'verified at {shape[0]}x{shape[1]}: max abs difference {diff:.3g} <= {args.atol}')
    return out, ranges, results


def main(argv=None):
    return run(parse_args(argv))


if __name__ == '__main__':
    main()
