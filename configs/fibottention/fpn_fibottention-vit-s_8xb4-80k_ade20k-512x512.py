# Fibottention ViT-S/16 + Semantic FPN, ADE20K 80k, 512x512 (the PVT/UniFormer Semantic FPN
# recipe: AdamW 2e-4, warmup + cosine). mmseg ships only a 160k file, so 80k is set here.
_base_ = ['mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmsparse.FibottentionViT',
        arch='small',
        img_size=224,
        attn_mode='sparse',
        out_indices=(2, 5, 8, 11),
        out_scales=(4, 2, 1, 0.5),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/deit_small_patch16_224-cd65a155.pth')),
    neck=dict(in_channels=[384, 384, 384, 384]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'pos_embed': dict(decay_mult=0.), 'cls_token': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=1000),
    dict(type='CosineAnnealingLR', T_max=79000, eta_min_ratio=1e-8, by_epoch=False,
         begin=1000, end=80000),
]
train_cfg = dict(max_iters=80000, val_interval=8000)
default_hooks = dict(checkpoint=dict(interval=8000))
