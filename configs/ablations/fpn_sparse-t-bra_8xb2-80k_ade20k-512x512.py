# Attention ablation, Semantic FPN ADE20K 80k:
# bi-level routing attention (BiFormer), 8x8 regions, 4 routed regions per query region.
_base_ = ['./fpn_sparse-t_8xb2-80k_ade20k-512x512.py']

# _delete_: replace the base's attn_cfg instead of merging these keys into it.
model = dict(
    backbone=dict(attn_cfg=dict(_delete_=True, type='mmsparse.BiLevelRoutingAttention', n_win=8, topk=4)))
