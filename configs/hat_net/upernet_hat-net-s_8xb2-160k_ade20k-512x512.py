# HAT-Net-S + UperNet, ADE20K 160k. The HAT-Net paper reports no UperNet result (it follows
# PVT, which uses Semantic FPN only), so this uses the common Swin UperNet recipe: AdamW
# lr 6e-5, wd 0.01, no decay on norms, 1500-iter linear warmup then poly (power 1), 8 GPUs x 2.
# HAT-Net's norms are GroupNorms inside Sequentials (``patch_embed.1``, ``conv.conv1.0``...), which
# a name match on 'norm' would miss, so the decay is switched off by module type.
_base_ = ['mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmsparse.HATNet',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/HAT-Net_Small.pth')),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]
train_dataloader = dict(batch_size=2)
