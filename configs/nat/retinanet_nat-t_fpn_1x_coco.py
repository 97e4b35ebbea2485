# Not in the paper: NAT-T + RetinaNet 1x on COCO with the NAT detection optimiser.
# RetinaNet's FPN starts at stride 8, so the backbone does not return the stride-4 map
# (same P3-P7 pyramid as start_level=1, without unused parameters under DDP).
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.NAT',
        arch='tiny',
        kernel_size=7,
        out_indices=(1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/nat_tiny.pth')),
    neck=dict(in_channels=[128, 256, 512], start_level=0))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
