# Attention ablation, RetinaNet 1x COCO:
# 7x7 neighborhood attention (NAT).
_base_ = ['./retinanet_sparse-t_fpn_1x_coco.py']

# _delete_: replace the base's attn_cfg instead of merging these keys into it.
model = dict(
    backbone=dict(attn_cfg=dict(_delete_=True, type='mmsparse.NeighborhoodAttention2d', kernel_size=7)))
