# NAT-T + Mask R-CNN 1x on COCO. The paper reports the 3x multi-scale schedule (the
# cascade-mask-rcnn_*_3x configs show it); this is the stock 1x schedule with the official
# optimiser (mask_rcnn_nat_tiny_3x_coco.py: AdamW 1e-4, wd 0.05, no decay on rpb and norms).
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.NAT',
        arch='tiny',
        kernel_size=7,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/nat_tiny.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
