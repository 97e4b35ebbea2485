# Attention ablation, UperNet ADE20K 160k:
# 7x7 neighborhood attention (NAT).
_base_ = ['./upernet_sparse-t_8xb2-160k_ade20k-512x512.py']

# _delete_: replace the base's attn_cfg instead of merging these keys into it.
model = dict(
    backbone=dict(attn_cfg=dict(_delete_=True, type='mmsparse.NeighborhoodAttention2d', kernel_size=7)))
