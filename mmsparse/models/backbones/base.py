"""What every mmsparse backbone shares: presets, output selection, freezing, pretrained loading."""
from collections.abc import Sequence

import numpy as np
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..attentions import TokenMixer
from ..utils import load_pretrained_weights


class SparseBackbone(BaseModule):
    """Base class of the mmsparse backbones.

    Subclasses set ``arch_zoo`` (preset name -> dict) and ``arch_keys`` (the keys a
    custom ``arch`` dict must have) and, to load official checkpoints, implement
    :meth:`_is_official` and :meth:`_convert_official`. Hierarchical backbones with
    ``downsample_layers`` (the first is the stem), ``stages`` and output norms
    ``norm{i}`` freeze as they are; others override :meth:`_stem_modules` and
    :meth:`_stage_modules`. ``frozen_stages`` follows OpenMMLab (mmdet ``ResNet``,
    ``SwinTransformer``): -1 freezes nothing, 0 the stem only, ``k >= 1`` the stem
    and stages ``0..k-1``. ``out_indices`` is checked by :meth:`_parse_out_indices`.

    Weights are initialised by :meth:`init_weights` (MMEngine's runner and the
    OpenMMLab detectors/segmentors call it), never at construction, so a build pays
    for no init and a checkpoint load for one.
    """

    arch_zoo = {}
    arch_keys = ()
    # Keys of ``arch`` that hold one entry per stage.
    per_stage_arch_keys = ()
    num_stages = 1
    # Keys that may be missing from (or extra in) a checkpoint: output norms are absent
    # from ImageNet weights and keep their init, as in the official loaders.
    tolerated_checkpoint_keys = (r'^norm\d\.', )

    def _parse_arch(self, arch):
        """A preset name or a dict with exactly ``arch_keys`` -> the arch dict."""
        name = type(self).__name__
        if isinstance(arch, str):
            if arch not in self.arch_zoo:
                raise ValueError(f'arch={arch!r} is not a {name} preset; choose one of '
                                 f'{sorted(self.arch_zoo)} or pass a dict')
            return self.arch_zoo[arch]
        if not isinstance(arch, dict):
            raise TypeError(f'arch must be a preset name or a dict, got {type(arch).__name__}')
        if set(arch) != set(self.arch_keys):
            raise ValueError(f'arch={arch} must have exactly the keys {sorted(self.arch_keys)}')
        for key in self.per_stage_arch_keys:
            if len(arch[key]) != self.num_stages:
                raise ValueError(f"arch['{key}']={arch[key]} must have {self.num_stages} entries")
        return arch

    @staticmethod
    def _check_heads_fit(name, divisor, widths):
        """Every stage width must split into whole heads.

        ``divisor`` is one head dim for all stages, or a sequence with one head count per stage.
        """
        per_stage = isinstance(divisor, (list, tuple))
        for i, width in enumerate(widths):
            entry, label = (divisor[i], f'{name}[{i}]') if per_stage else (divisor, name)
            if width % entry:
                raise ValueError(f'{label}={entry} must divide the width {width} of stage {i}')

    @staticmethod
    def _parse_out_indices(out_indices, num_outputs):
        """Check ``out_indices`` and return it as a tuple of indices in ``[0, num_outputs)``.

        The one check every backbone uses. An int or a sequence of ints (not bools,
        not floats), each in ``[-num_outputs, num_outputs - 1]``; negative indices
        count from the end, as in mmpretrain, and are normalised. Duplicates (also
        after normalisation, e.g. ``(3, -1)`` of 4) are refused.

        Raises:
            TypeError: ``out_indices`` is not an int or a sequence of ints.
            ValueError: an index is out of range, or an index repeats.
        """
        low, high = -num_outputs, num_outputs - 1
        allowed = f'ints in [{low}, {high}] (negative ones count from the end), no repeats'

        def is_int(i):
            return isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_))

        given = out_indices
        if is_int(out_indices):
            out_indices = (out_indices, )
        elif isinstance(out_indices, (str, bytes)) or not isinstance(out_indices, Sequence):
            raise TypeError(f'out_indices={given!r} must be an int or a sequence of {allowed}; '
                            f'got a {type(given).__name__}')
        for i in out_indices:
            if not is_int(i):
                raise TypeError(f'out_indices={given!r} must hold {allowed}; {i!r} is a '
                                f'{type(i).__name__}')
        for i in out_indices:
            if not low <= i <= high:
                raise ValueError(f'out_indices={given!r} must hold {allowed}; {i} is out of range '
                                 f'for {num_outputs} outputs')
        normalised = tuple(int(i) % num_outputs for i in out_indices)
        repeated = sorted({i for i in normalised if normalised.count(i) > 1})
        if repeated:
            raise ValueError(f'out_indices={given!r} must hold {allowed}; output '
                             f'{", ".join(map(str, repeated))} is selected more than once')
        if not normalised:
            raise ValueError(f'out_indices={given!r} must select at least one output: {allowed}')
        return normalised

    @staticmethod
    def _check_frozen_stages(frozen_stages, last_stage):
        """Check ``frozen_stages`` against the index ``last_stage`` of the last stage.

        OpenMMLab's convention (mmdet ``ResNet``/``SwinTransformer``): -1 freezes
        nothing, 0 the stem only, ``k >= 1`` the stem and stages ``0..k-1``; so the
        allowed range is ``[-1, last_stage + 1]`` (``last_stage + 1`` freezes all).
        """
        largest = last_stage + 1
        allowed = (f'an int in [-1, {largest}]: -1 freezes nothing, 0 the stem, k >= 1 the stem '
                   'and stages 0..k-1')
        if not isinstance(frozen_stages, (int, np.integer)) or isinstance(frozen_stages, (bool, np.bool_)):
            raise TypeError(f'frozen_stages={frozen_stages!r} must be {allowed}; got a '
                            f'{type(frozen_stages).__name__}')
        if not -1 <= frozen_stages <= largest:
            raise ValueError(f'frozen_stages={frozen_stages!r} must be {allowed}')
        return int(frozen_stages)

    def _set_output_and_freeze_options(self, out_indices, frozen_stages, norm_eval, num_outputs):
        """Check and set the options every backbone takes: ``out_indices`` (see
        :meth:`_parse_out_indices`) and ``frozen_stages`` (see :meth:`_check_frozen_stages`)
        over ``num_outputs`` stages (blocks for a plain ViT), and ``norm_eval``."""
        self.out_indices = self._parse_out_indices(out_indices, num_outputs)
        self.frozen_stages = self._check_frozen_stages(frozen_stages, num_outputs - 1)
        self.norm_eval = norm_eval

    @staticmethod
    def _init_layer(m):
        """timm's ViT init, used by the official models: trunc-normal Linear, unit LayerNorm."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _init_random(self):
        """The family's random init: :meth:`_init_layer` on every module, then each token mixer's own."""
        self.apply(self._init_layer)
        for module in self.modules():
            if isinstance(module, TokenMixer):
                module.init_weights()

    def _is_official(self, state_dict):
        """Whether ``state_dict`` uses the official key names."""
        return False

    def _convert_official(self, state_dict):
        """Map official keys to this backbone's keys."""
        raise NotImplementedError

    def _check_state_dict(self, state_dict):
        """Refuse a checkpoint this configuration cannot take, before any shape is compared.

        Called on every ``init_cfg`` checkpoint (after key conversion), whatever
        ``strict`` says. Families whose hyper-parameters show in weight shapes (BiFormer's
        ``side_dwconv``) override it to name the argument; the default accepts all.
        """

    def init_weights(self):
        """Random init (:meth:`_init_random`), then the ``init_cfg`` checkpoint or initialisers.

        With a checkpoint the random init runs once the checkpoint has passed every
        check, right before its weights are copied: keys a ``strict=False``
        checkpoint lacks (output norms, pyramid layers) keep the family's init, and a
        refused checkpoint leaves the model as it was.
        """
        random_init = None if self._is_init else self._init_random
        if self.init_cfg is None or self.init_cfg.get('type') != 'Pretrained':
            if random_init is not None:
                random_init()
            super().init_weights()
            return
        load_pretrained_weights(
            self,
            self.init_cfg['checkpoint'],
            convert=self._convert_official,
            is_official=self._is_official,
            check=self._check_state_dict,
            prefix=self.init_cfg.get('prefix'),
            strict=self.init_cfg.get('strict', True),
            tolerated_keys=self.tolerated_checkpoint_keys,
            before_copy=random_init)
        self._is_init = True

    def _stem_modules(self):
        """The stem, which ``frozen_stages=0`` freezes: the first downsampling layer."""
        return [self.downsample_layers[0]]

    def _stage_modules(self, i):
        """Stage ``i`` without the stem: its downsampling layer (``i >= 1``), blocks and output norm."""
        modules = [self.downsample_layers[i]] if i > 0 else []
        modules.append(self.stages[i])
        if hasattr(self, f'norm{i}'):
            modules.append(getattr(self, f'norm{i}'))
        return modules

    def _frozen_modules(self):
        """What ``frozen_stages`` freezes: nothing for -1, else the stem and stages ``0..frozen_stages-1``."""
        if self.frozen_stages < 0:
            return []
        return self._stem_modules() + [m for i in range(self.frozen_stages) for m in self._stage_modules(i)]

    def _freeze_stages(self):
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self
