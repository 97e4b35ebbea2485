"""The token-mixer interface: registered modules mapping an (N, H, W, C) map to (N, H, W, C)."""
import inspect

from torch import nn

from mmsparse.registry import MODELS


def mixer_arguments(cls):
    """The constructor arguments of the token mixer class ``cls``, in signature order."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return tuple(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def check_mixer_arguments(cls, names, where=None):
    """Refuse an argument ``cls`` does not take, naming it and listing the ones it takes.

    Args:
        cls (type): a :class:`TokenMixer` subclass.
        names (Iterable[str]): the keyword arguments given.
        where (str, optional): the config key the arguments came from, for the
            message (``'attn_cfg[2]'``). Defaults to None.

    Raises:
        TypeError: an argument is not one of ``cls``'s constructor arguments.
    """
    accepted = mixer_arguments(cls)
    unknown = [name for name in names if name not in accepted]
    if unknown:
        origin = f'{where}: ' if where else ''
        raise TypeError(f'{origin}{cls.__name__} does not take the argument(s) '
                        f'{", ".join(map(repr, unknown))}; it takes {", ".join(accepted)}')


class TokenMixer(nn.Module):
    """Base of the registered token mixers (attentions) of mmsparse.

    Every mixer is built as ``MODELS.build(cfg, default_args=dict(embed_dims=C,
    num_heads=h))`` (or by :func:`build_token_mixer`) and maps an ``(N, H, W, C)``
    map to the same shape. An argument the mixer does not take fails at
    construction, before any parameter is made, with the list of the arguments it
    takes. Parameters that a backbone's layer-wise init (Linear / LayerNorm) does
    not reach are initialised by :meth:`init_weights`, which backbones call from
    their own ``init_weights`` (never at construction, so a build pays no init).
    """

    def __new__(cls, *args, **kwargs):
        check_mixer_arguments(cls, kwargs)
        return super().__new__(cls)

    def init_weights(self):
        """Initialise the parameters only this mixer knows about; none by default."""


def token_mixer_types():
    """The ``type`` names of every registered token mixer, sorted (``'mmsparse.X'``)."""
    return sorted(f'{MODELS.scope}.{name}' for name, cls in MODELS.module_dict.items()
                  if isinstance(cls, type) and issubclass(cls, TokenMixer))


def build_token_mixer(cfg, embed_dims, num_heads, where='attn_cfg', **optional):
    """Build a registered token mixer from ``cfg`` for a ``embed_dims``-channel map.

    Args:
        cfg (dict): ``dict(type='mmsparse.X', **args)``; ``args`` override the defaults.
        embed_dims (int): channels C, passed as ``embed_dims``.
        num_heads (int): heads, passed as ``num_heads`` unless ``cfg`` sets it.
        where (str): the config key of ``cfg``, named in errors. Defaults to
            ``'attn_cfg'``.
        **optional: defaults passed only to mixers that take them and only where
            ``cfg`` does not set them (``backend``, ``layer_id``).

    Returns:
        TokenMixer: the mixer.

    Raises:
        TypeError: ``cfg`` is not a dict with a ``type``, or holds an argument the
            mixer does not take.
        KeyError: ``cfg['type']`` is not a registered token mixer.
    """
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'{where}={cfg!r} must be a dict with a type, one of {token_mixer_types()}')
    cls = cfg['type'] if isinstance(cfg['type'], type) else MODELS.get(cfg['type'])
    if not (isinstance(cls, type) and issubclass(cls, TokenMixer)):
        raise KeyError(f"{where}.type={cfg['type']!r} is not a registered token mixer; choose one of "
                       f'{token_mixer_types()}')
    args = {k: v for k, v in cfg.items() if k != 'type'}
    check_mixer_arguments(cls, args, where)
    accepted = mixer_arguments(cls)
    defaults = dict(embed_dims=embed_dims, num_heads=num_heads)
    defaults.update((k, v) for k, v in optional.items() if k in accepted)
    return cls(**{**defaults, **args})
