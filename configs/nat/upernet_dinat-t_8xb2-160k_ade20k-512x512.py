# DiNAT-T + UperNet, ADE20K 160k, 512x512 (official upernet_dinat_tiny_512x512_160k_ade20k.py):
# the NAT-T recipe with the ADE20K dilations of the official configs.
_base_ = ['./upernet_nat-t_8xb2-160k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        dilations=[[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2, 1, 2, 1]],
        init_cfg=dict(checkpoint='pretrain/dinat_tiny_in1k_224.pth')))
