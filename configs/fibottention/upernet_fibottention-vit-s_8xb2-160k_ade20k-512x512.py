# Fibottention ViT-S/16 + UperNet, ADE20K 160k, 512x512 (mmseg's ViT + UperNet recipe).
# No official dense-prediction recipe exists; the ViT gets the simple feature pyramid
# (strides 4/8/16/32 from blocks 3/6/9/12) and DeiT-S ImageNet weights.
_base_ = ['mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmsparse.FibottentionViT',
        arch='small',
        img_size=224,
        attention='fibottention',
        attn_mode='sparse',
        shuffle='per_layer',
        offset_layout='1d',
        out_indices=(2, 5, 8, 11),
        out_scales=(4, 2, 1, 0.5),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/deit_small_patch16_224-cd65a155.pth')),
    decode_head=dict(in_channels=[384, 384, 384, 384]),
    auxiliary_head=dict(in_channels=384))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'pos_embed': dict(decay_mult=0.),
        'cls_token': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]
train_dataloader = dict(batch_size=2)
