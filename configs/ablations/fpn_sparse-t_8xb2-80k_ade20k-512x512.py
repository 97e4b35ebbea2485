# Attention ablation base: SparseTransformer-T + Semantic FPN, ADE20K 80k, 512x512, from scratch.
# Every fpn_sparse-t-<attention>_* child changes only model.backbone.attn_cfg.
# Recipe: PVT's Semantic FPN schedule in mmseg's units (AdamW 1e-4, wd 1e-4, poly 0.9 to 0,
# 80k iterations at 8 GPUs x 2 images). mmseg ships no 80k Semantic FPN file, so the 160k one
# is inherited and its schedule shortened here.
_base_ = ['mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmsparse.SparseTransformer',
        arch='tiny',
        attn_cfg=dict(type='mmsparse.WindowAttention', window_size=8, shift='alternate'),
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, by_epoch=False, begin=0, end=80000)]
train_dataloader = dict(batch_size=2)
train_cfg = dict(max_iters=80000, val_interval=8000)
default_hooks = dict(checkpoint=dict(interval=8000))
