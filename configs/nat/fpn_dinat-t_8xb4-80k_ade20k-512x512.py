# Not in the paper: DiNAT-T + Semantic FPN, ADE20K 80k (the NAT-T FPN recipe, ADE20K dilations).
_base_ = ['./fpn_nat-t_8xb4-80k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        dilations=[[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2, 1, 2, 1]],
        init_cfg=dict(checkpoint='pretrain/dinat_tiny_in1k_224.pth')))
