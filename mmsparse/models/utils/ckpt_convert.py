"""Official-key to mmsparse-key maps, one function per family."""
import re
from collections import OrderedDict

# (pattern, replacement) applied in order to every official BiFormer key.
_BIFORMER_RENAMES = (
    (r'^(stages\.\d+\.\d+)\.pos_embed\.', r'\1.cpe.'),
    (r'^(stages\.\d+\.\d+\.attn)\.qkv\.qkv\.', r'\1.qkv.'),
    (r'^(stages\.\d+\.\d+\.attn)\.wo\.', r'\1.proj.'),
    (r'^(stages\.\d+\.\d+\.mlp)\.0\.', r'\1.fc1.'),
    (r'^(stages\.\d+\.\d+\.mlp)\.3\.', r'\1.fc2.'),
    (r'^extra_norms\.(\d+)\.', r'norm\1.'),
)
# The ImageNet classifier (final BatchNorm2d + Linear) has no place in a backbone.
_BIFORMER_CLASSIFIER = re.compile(r'^(norm|head)\.')


def is_official_biformer(state_dict):
    """True if ``state_dict`` uses the official BiFormer key names."""
    official = re.compile(r'^(extra_norms\.|head\.|norm\.)|\.(pos_embed|attn\.qkv\.qkv|attn\.wo|mlp\.[03])\.')
    return any(official.search(key) for key in state_dict)


def biformer_official_to_mmsparse(state_dict):
    """Map an official BiFormer state dict (classifier or ``BiFormer_mm``) to mmsparse keys.

    Drops the classifier's ``norm.*`` and ``head.*``; renames ``pos_embed`` ->
    ``cpe``, ``attn.qkv.qkv`` -> ``attn.qkv``, ``attn.wo`` -> ``attn.proj``,
    ``mlp.0/3`` -> ``mlp.fc1/fc2`` and ``extra_norms.i`` -> ``norm{i}``. Every
    other key (stem, downsampling, LayerNorms, LePE, stage-4 MHSA) is kept.
    """
    converted = OrderedDict()
    for key, value in state_dict.items():
        if _BIFORMER_CLASSIFIER.match(key):
            continue
        for pattern, replacement in _BIFORMER_RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    return converted
