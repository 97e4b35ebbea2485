# Not in the paper: BiFormer-T with the BiFormer-S recipe.
_base_ = ['./fpn_biformer-s_8xb4-80k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.1,
        init_cfg=dict(checkpoint='pretrain/biformer_tiny_in1k.pth')))
