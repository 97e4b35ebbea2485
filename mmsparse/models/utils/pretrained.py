"""Loading official or mmsparse checkpoints into a backbone, loudly."""
import os.path as osp
import re

from mmengine.logging import print_log

from mmsparse.utils import load_state_dict_from_checkpoint
from mmsparse.utils.checkpoint import check_state_dict_tensors


def load_pretrained_weights(model, checkpoint, convert=None, is_official=None, check=None,
                            prefix=None, strict=True, tolerated_keys=(), before_copy=None):
    """Load ``checkpoint`` into ``model``, converting official keys, and report every mismatch.

    Args:
        model (nn.Module): the backbone.
        checkpoint (str): path or URL (``https://``, ``open-mmlab://`` ...) of an official,
            mmsparse or full mmdet/mmseg checkpoint.
        convert (callable, optional): maps official keys to mmsparse keys.
        is_official (callable, optional): tells whether a state dict needs ``convert``.
        check (callable, optional): called on the (converted) state dict before any
            key or shape is compared; raises to refuse the checkpoint whatever
            ``strict`` says.
        prefix (str, optional): keep only keys under this prefix (e.g. ``'backbone.'``)
            and strip it. By default, when any key starts with ``backbone.`` (a backbone or a
            whole detector/segmentor saved by MMEngine), only those keys are kept.
        strict (bool): raise on missing, unexpected or mis-shaped keys (default);
            if False they are logged as warnings and the rest is loaded.
        tolerated_keys (Sequence[str]): regexes of keys allowed to be missing or
            unexpected, e.g. output norms absent from an ImageNet checkpoint.
            They are logged at INFO level.
        before_copy (callable, optional): called with no argument once every check
            has passed, right before the weights are copied: the backbone's random
            init, so the keys the checkpoint lacks keep it and a refused checkpoint
            changes nothing. Defaults to None.

    Raises:
        RuntimeError: with ``strict``, naming every offending key, before any
            weight is copied (nothing is half-loaded); and whatever ``strict`` says,
            when not a single tensor of the checkpoint fits the model.
        FileNotFoundError: if a local ``checkpoint`` is not a file.
        TypeError: a value of the checkpoint's state dict is not a tensor (names the
            file, the key and its type), before any weight is copied.
        RuntimeError: the checkpoint file is empty or truncated (names the file).
    """
    if '://' not in checkpoint and not osp.isfile(osp.expanduser(checkpoint)):
        raise FileNotFoundError(
            f'{type(model).__name__}: init_cfg checkpoint={checkpoint!r} does not exist. Download '
            'the official weights (see the config folder README) or set '
            'model.backbone.init_cfg=None to train from scratch.')
    state_dict = load_state_dict_from_checkpoint(checkpoint)
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    if prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise RuntimeError(f'checkpoint {checkpoint} has no key under prefix={prefix!r}')
    if convert is not None and is_official is not None and is_official(state_dict):
        state_dict = convert(state_dict)
    # Anything that is not a tensor (from the file or a conversion) is refused here,
    # before any shape is compared or any weight copied.
    check_state_dict_tensors(state_dict, checkpoint)
    if check is not None:
        check(state_dict)

    own = model.state_dict()
    tolerated = [re.compile(p) for p in tolerated_keys]

    def is_tolerated(key):
        return any(p.search(key) for p in tolerated)

    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}'
                  for k in state_dict if k in own and state_dict[k].shape != own[k].shape]
    problems = []
    for title, keys in (('missing keys', [k for k in missing if not is_tolerated(k)]),
                        ('unexpected keys', [k for k in unexpected if not is_tolerated(k)]),
                        ('shape mismatches', mismatched)):
        if keys:
            problems.append(f'{len(keys)} {title}: ' + ', '.join(keys))
    name = type(model).__name__
    if problems:
        message = f'{name}: checkpoint {checkpoint} does not match the model; ' + '; '.join(problems)
        if strict:
            raise RuntimeError(message + ' (pass strict=False in init_cfg to load the rest anyway)')
        print_log(message, logger='current', level=30)
    skipped = [k for k in missing + unexpected if is_tolerated(k)]
    if skipped:
        print_log(f'{name}: keys not in both model and checkpoint (expected, they keep their '
                  f'init or are unused): {", ".join(skipped)}', logger='current')
    loadable = {k: v for k, v in state_dict.items() if k in own and v.shape == own[k].shape}
    if not loadable:
        raise RuntimeError(f'{name}: not a single tensor of checkpoint {checkpoint} fits the model; '
                           'is it a checkpoint of this backbone? ' + '; '.join(problems))
    if before_copy is not None:
        before_copy()
    model.load_state_dict(loadable, strict=False)
    print_log(f'{name}: loaded {len(loadable)}/{len(own)} tensors from {checkpoint}', logger='current')
