# Attention ablation base: SparseTransformer-T + RetinaNet 1x on COCO, from scratch.
# Every retinanet_sparse-t-<attention>_* child changes only model.backbone.attn_cfg.
# Recipe: the stock 1x schedule with AdamW (1e-4, wd 1e-4), 8 GPUs x 2 images. The stock FPN
# skips the stride-4 map (start_level=1); here the backbone does not return it at all, which
# builds the same P3-P7 pyramid without parameters left unused under DDP.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.SparseTransformer',
        arch='tiny',
        attn_cfg=dict(type='mmsparse.WindowAttention', window_size=8, shift='alternate'),
        out_indices=(1, 2, 3),
        norm_eval=True,
        drop_path_rate=0.2,
        init_cfg=None),
    neck=dict(in_channels=[128, 256, 512], start_level=0))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))
