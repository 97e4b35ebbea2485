"""mmsparse.AlignResize: PVT's test resize (keep ratio, then both sides up to multiples of 32)."""
import subprocess
import sys

import numpy as np
import pytest

from mmsparse.datasets import AlignResize

from ..conftest import REPO_ROOT


def sample(height, width):
    rng = np.random.default_rng(0)
    seg = np.repeat(np.arange(width, dtype=np.uint8)[None] % 7, height, axis=0)
    return dict(img=rng.integers(0, 255, (height, width, 3), dtype=np.uint8), gt_seg_map=seg)


@pytest.mark.parametrize('size,kept,aligned', [
    ((375, 500), (512, 683), (512, 704)),    # a typical ADE20K image
    ((512, 512), (512, 512), (512, 512)),    # already aligned: only the rescale
    ((200, 1500), (273, 2048), (288, 2048)),  # the long side caps the keep-ratio step
])
def test_rescales_then_aligns_to_multiples_of_32(size, kept, aligned):
    height, width = size
    results = AlignResize(scale=(2048, 512))(sample(height, width))
    assert results['img'].shape[:2] == aligned == tuple(results['img_shape'])
    assert results['gt_seg_map'].shape == aligned
    assert results['scale_factor'] == pytest.approx((aligned[1] / width, aligned[0] / height))
    # The keep-ratio step is mmcv's Resize: same intermediate size as PVT's first step.
    from mmcv import rescale_size
    assert rescale_size((width, height), (2048, 512)) == kept[::-1]


def test_segmentation_labels_stay_labels():
    results = AlignResize(scale=(2048, 512))(sample(375, 500))
    assert set(np.unique(results['gt_seg_map'])) <= set(range(7))


@pytest.mark.parametrize('kwargs,match', [
    (dict(scale=(2048, 512), keep_ratio=False), 'keep_ratio=False'),
    (dict(scale=(2048, 512), size_divisor=0), 'size_divisor=0'),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlignResize(**kwargs)


def test_resolves_from_mmseg_scope_in_a_fresh_interpreter():
    code = ("import numpy as np\n"
            "from mmengine.registry import init_default_scope\n"
            "from mmseg.registry import TRANSFORMS\n"
            "init_default_scope('mmseg')\n"
            "t = TRANSFORMS.build(dict(type='mmsparse.AlignResize', scale=(2048, 512)))\n"
            "print(type(t).__module__, t(dict(img=np.zeros((375, 500, 3), np.uint8)))['img_shape'])\n")
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith('mmsparse.datasets.transforms (512, 704)')
