# HAT-Net-S + Semantic FPN, ADE20K 80k: the HAT-Net-T recipe (PVT's) with the small backbone.
_base_ = ['./fpn_hat-net-t_8xb2-80k_ade20k-512x512.py']

model = dict(
    backbone=dict(arch='small', init_cfg=dict(checkpoint='pretrain/HAT-Net_Small.pth')),
    neck=dict(in_channels=[64, 128, 320, 512]))
