# Attention ablation, Mask R-CNN 1x COCO:
# shifted 8x8 window attention (Swin), the bases' default.
_base_ = ['./mask-rcnn_sparse-t_fpn_1x_coco.py']

# _delete_: replace the base's attn_cfg instead of merging these keys into it.
# shift='alternate': regular windows in even blocks of a stage, shifted in odd ones (Swin).
model = dict(
    backbone=dict(
        attn_cfg=dict(_delete_=True, type='mmsparse.WindowAttention', window_size=8, shift='alternate')))
