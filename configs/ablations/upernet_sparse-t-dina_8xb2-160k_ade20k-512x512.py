# Attention ablation, UperNet ADE20K 160k:
# 7x7 dilated neighborhood attention (DiNAT), one dilation per stage.
_base_ = ['./upernet_sparse-t_8xb2-160k_ade20k-512x512.py']

# The dilations keep 7 * dilation within every stage's map at 512 inputs (128, 64, 32, 16).
model = dict(
    backbone=dict(attn_cfg=[
        dict(type='mmsparse.NeighborhoodAttention2d', kernel_size=7, dilation=8),
        dict(type='mmsparse.NeighborhoodAttention2d', kernel_size=7, dilation=4),
        dict(type='mmsparse.NeighborhoodAttention2d', kernel_size=7, dilation=2),
        dict(type='mmsparse.NeighborhoodAttention2d', kernel_size=7, dilation=2),
    ]))
