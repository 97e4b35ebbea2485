# NAT-T + Cascade Mask R-CNN 3x on COCO, the paper's detection setting (official
# cascade_mask_rcnn_nat_tiny_3x_coco.py): multi-scale training, AdamW 1e-4 (wd 0.05, no decay
# on rpb and norms), 36 epochs with steps at 27 and 33, fp16 (pass --amp on a GPU).
# Box heads: mmdet's stock cascade heads; the official ones (4 convs + 1 fc, GIoU loss) are
# ~10x costlier on a CPU and are described in README.md.
_base_ = ['mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py']
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

# Multi-scale training: (1333, 800) scaled by 0.6-1.0, i.e. short side 480-800. The official
# runs add the DETR crop branch (see README).
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=(1333, 800), ratio_range=(0.6, 1.0), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', by_epoch=True, begin=0, end=max_epochs, milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
