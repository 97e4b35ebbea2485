# Attention ablation base: SparseTransformer-T + Mask R-CNN 1x on COCO, from scratch.
# Every mask-rcnn_sparse-t-<attention>_* child changes only model.backbone.attn_cfg.
# Recipe: the stock 1x schedule (12 epochs, steps at 8 and 11, 500-iteration warmup) with
# Swin's AdamW (1e-4, wd 0.05, no decay on norms), 8 GPUs x 2 images.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.SparseTransformer',
        arch='tiny',
        attn_cfg=dict(type='mmsparse.WindowAttention', window_size=8, shift='alternate'),
        out_indices=(0, 1, 2, 3),
        norm_eval=True,
        drop_path_rate=0.2,
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
