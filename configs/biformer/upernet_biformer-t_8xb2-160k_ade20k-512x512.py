# Not in the paper: BiFormer-T with the BiFormer-S recipe and a lighter drop path.
_base_ = ['./upernet_biformer-s_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='pretrain/biformer_tiny_in1k.pth')))
