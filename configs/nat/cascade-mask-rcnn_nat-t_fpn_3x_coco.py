# NAT-T + Cascade Mask R-CNN 3x on COCO, the paper's detection setting (official
# cascade_mask_rcnn_nat_tiny_3x_coco.py). mmdet's ConvNeXt cascade config is exactly that
# setting in mmdet 3.x form: three class-specific 4conv1fc box heads (SyncBN, GIoU loss x10,
# decoded-box regression), the DETR-style multi-scale + crop pipeline, 36 epochs with steps at
# 27 and 33. Only the backbone, the optimiser and the warmup are NAT's.
_base_ = ['mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.NAT',
        arch='tiny',
        kernel_size=7,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/nat_tiny.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))

# The official runs used fp16 through mmcv's Fp16OptimizerHook; `tools/train.py --amp` turns
# this wrapper into mmengine's AmpOptimWrapper on a GPU.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end={{_base_.max_epochs}},
         milestones=[27, 33], gamma=0.1),
]
