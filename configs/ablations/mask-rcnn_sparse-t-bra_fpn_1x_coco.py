# Attention ablation, Mask R-CNN 1x COCO:
# bi-level routing attention (BiFormer), 8x8 regions, 4 routed regions per query region.
_base_ = ['./mask-rcnn_sparse-t_fpn_1x_coco.py']

# _delete_: replace the base's attn_cfg instead of merging these keys into it.
model = dict(
    backbone=dict(attn_cfg=dict(_delete_=True, type='mmsparse.BiLevelRoutingAttention', n_win=8, topk=4)))
