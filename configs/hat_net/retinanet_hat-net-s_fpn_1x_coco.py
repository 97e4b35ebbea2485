# HAT-Net-S + RetinaNet 1x on COCO: the HAT-Net-T recipe (PVT's) with the small backbone.
_base_ = ['./retinanet_hat-net-t_fpn_1x_coco.py']

model = dict(
    backbone=dict(arch='small', init_cfg=dict(checkpoint='pretrain/HAT-Net_Small.pth')),
    neck=dict(in_channels=[128, 320, 512]))
