# Attention ablation, Mask R-CNN 1x COCO:
# Fibottention with 2-D (row, column) Fibonacci offsets.
_base_ = ['./mask-rcnn_sparse-t_fpn_1x_coco.py']

# _delete_: replace the base's attn_cfg instead of merging these keys into it.
model = dict(
    backbone=dict(attn_cfg=dict(_delete_=True, type='mmsparse.Fibottention2d', offset_layout='2d')))
