# Attention ablation, Semantic FPN ADE20K 80k:
# shifted 8x8 window attention (Swin), the bases' default.
_base_ = ['./fpn_sparse-t_8xb2-80k_ade20k-512x512.py']

# _delete_: replace the base's attn_cfg instead of merging these keys into it.
# shift='alternate': regular windows in even blocks of a stage, shifted in odd ones (Swin).
model = dict(
    backbone=dict(
        attn_cfg=dict(_delete_=True, type='mmsparse.WindowAttention', window_size=8, shift='alternate')))
