# Not in the paper: BiFormer-T with the BiFormer-S recipe.
_base_ = ['./mask-rcnn_biformer-s_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.1,
        init_cfg=dict(checkpoint='pretrain/biformer_tiny_in1k.pth')))
