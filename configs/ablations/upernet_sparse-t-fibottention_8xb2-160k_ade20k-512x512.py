# Attention ablation, UperNet ADE20K 160k:
# Fibottention with 2-D (row, column) Fibonacci offsets.
_base_ = ['./upernet_sparse-t_8xb2-160k_ade20k-512x512.py']

# _delete_: replace the base's attn_cfg instead of merging these keys into it.
model = dict(
    backbone=dict(attn_cfg=dict(_delete_=True, type='mmsparse.Fibottention2d', offset_layout='2d')))
