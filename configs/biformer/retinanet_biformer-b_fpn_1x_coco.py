_base_ = ['./retinanet_biformer-s_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='pretrain/biformer_base_in1k.pth')),
    neck=dict(in_channels=[192, 384, 768]))
