"""Convert a timm, DeiT or official Fibottention ViT checkpoint to mmsparse.FibottentionViT keys.

    python tools/model_converters/vit2mmsparse.py deit_small_patch16_224-cd65a155.pth pretrain/vit-s_mmsparse.pth
    python tools/model_converters/vit2mmsparse.py checkpoint-99.pth pretrain/fib-vit-b.pth --img-size 512

Accepts plain state dicts and checkpoints with the weights under ``'model'`` (DeiT,
the official MAE-style ``main_finetune.py``) or ``'state_dict'``. Drops the
classifier (``head``, ``head_dist``, ``fc_norm``, ``pre_logits``, ``dist_token``)
and, with ``--img-size``, resizes ``pos_embed`` bicubically to that input size
(the CLS slot kept apart). Writes ``{'state_dict': {name: tensor}}``, loadable with
``torch.load(..., weights_only=True)`` and by ``init_cfg=dict(type='Pretrained')``.
A progress bar over the tensors goes to stderr; ``--no-progress`` turns it off.
"""
import os.path as osp
import sys
from functools import partial

# the shared command line and progress bar of this folder, also when a test imports the file by path
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _converter import convert_file, converter_parser  # noqa: E402

from mmsparse.models.utils import vit_official_to_mmsparse  # noqa: E402


def convert(src, dst, img_size=None, patch_size=16, progress=True):
    """Convert checkpoint ``src`` and write the result to ``dst``.

    Args:
        src (str): The timm, DeiT or official checkpoint.
        dst (str): The output path; its folder is created.
        img_size (Sequence[int], optional): Input size (one value for square, or H W) to
            resize ``pos_embed`` to. Defaults to None (keep it).
        patch_size (int): Patch size of the model. Defaults to 16.
        progress (bool): Show a progress bar over the tensors on stderr. Defaults to True.
    """
    pos_grid = None if img_size is None else (img_size[0] // patch_size, img_size[-1] // patch_size)
    convert_file(partial(vit_official_to_mmsparse, pos_grid=pos_grid), src, dst, progress)


def main(argv=None):
    parser = converter_parser(__doc__, 'timm / DeiT / official Fibottention checkpoint')
    parser.add_argument('--img-size', type=int, nargs='+', help='resize pos_embed to this input size '
                        '(one value for square, or H W); default: keep it')
    parser.add_argument('--patch-size', type=int, default=16, help='patch size of the model (default 16)')
    args = parser.parse_args(argv)
    if args.img_size is not None and len(args.img_size) not in (1, 2):
        parser.error(f'--img-size takes 1 or 2 values, got {args.img_size}')
    convert(args.src, args.dst, args.img_size, args.patch_size, args.progress)


if __name__ == '__main__':
    main()
