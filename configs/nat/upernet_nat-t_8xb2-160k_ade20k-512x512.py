# NAT-T + UperNet, ADE20K 160k, 512x512: the official recipe (SHI-Labs/Neighborhood-Attention-
# Transformer, segmentation/configs/nat/upernet_nat_tiny_512x512_160k_ade20k.py) on mmseg 1.x.
_base_ = ['mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmsparse.NAT',
        arch='tiny',
        kernel_size=7,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/nat_tiny.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150))

# Official: AdamW 6e-5, wd 0.01, no decay on rpb and norms, 1500-iter warmup + poly(1.0),
# fp16 (pass --amp to tools/train.py on a GPU).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]
train_dataloader = dict(batch_size=2)
