"""PVT's ``AlignResize`` (the Semantic FPN test resize HAT-Net follows), for mmcv 2.x pipelines."""
import math

import mmcv
from mmcv.transforms import Resize

from mmsparse.registry import TRANSFORMS


@TRANSFORMS.register_module()
class AlignResize(Resize):
    """Resize keeping the aspect ratio, then stretch both sides up to multiples of ``size_divisor``.

    PVT (whai362/PVT, mmseg 0.x) evaluates its Semantic FPN models this way and the HAT-Net
    paper follows PVT: the image is first rescaled as ``Resize(scale, keep_ratio=True)`` does
    (e.g. 375x500 -> 512x683 for ``scale=(2048, 512)``), then resized again to
    ``ceil(h / d) * d x ceil(w / d) * d`` (512x704), so the network never sees padding.
    ``scale_factor`` and ``img_shape`` describe the final image, so boxes follow; a
    segmentation map present in ``results`` is aligned with nearest interpolation.

    Args:
        scale (tuple[int, int]): target ``(w, h)`` of the keep-ratio step, as ``Resize``.
        size_divisor (int): both output sides are multiples of it. Default 32.
        interpolation (str): image interpolation of both steps. Default ``'bilinear'``.
        **kwargs: the other ``mmcv.transforms.Resize`` arguments except ``keep_ratio``,
            which is always True.
    """

    def __init__(self, scale, size_divisor=32, interpolation='bilinear', **kwargs):
        if 'keep_ratio' in kwargs:
            raise ValueError(f"AlignResize always keeps the ratio; got keep_ratio={kwargs['keep_ratio']!r}")
        if not isinstance(size_divisor, int) or isinstance(size_divisor, bool) or size_divisor < 1:
            raise ValueError(f'size_divisor={size_divisor!r} must be a positive int')
        super().__init__(scale=scale, keep_ratio=True, interpolation=interpolation, **kwargs)
        self.size_divisor = size_divisor

    def _resize_img(self, results):
        if results.get('img') is None:
            return
        height, width = results['img'].shape[:2]
        super()._resize_img(results)
        kept_h, kept_w = results['img'].shape[:2]
        aligned_h = math.ceil(kept_h / self.size_divisor) * self.size_divisor
        aligned_w = math.ceil(kept_w / self.size_divisor) * self.size_divisor
        results['img'] = mmcv.imresize(results['img'], (aligned_w, aligned_h),
                                       interpolation=self.interpolation, backend=self.backend)
        results['img_shape'] = (aligned_h, aligned_w)
        results['scale_factor'] = (aligned_w / width, aligned_h / height)

    def _resize_seg(self, results):
        if results.get('gt_seg_map') is None:
            return
        height, width = results['img_shape']
        results['gt_seg_map'] = mmcv.imresize(results['gt_seg_map'], (width, height),
                                              interpolation='nearest', backend=self.backend)
