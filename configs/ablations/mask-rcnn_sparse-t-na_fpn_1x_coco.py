# Attention ablation, Mask R-CNN 1x COCO:
# 7x7 neighborhood attention (NAT).
_base_ = ['./mask-rcnn_sparse-t_fpn_1x_coco.py']

# _delete_: replace the base's attn_cfg instead of merging these keys into it.
model = dict(
    backbone=dict(attn_cfg=dict(_delete_=True, type='mmsparse.NeighborhoodAttention2d', kernel_size=7)))
