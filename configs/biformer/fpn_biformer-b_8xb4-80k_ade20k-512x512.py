_base_ = ['./fpn_biformer-s_8xb4-80k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='pretrain/biformer_base_in1k.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
