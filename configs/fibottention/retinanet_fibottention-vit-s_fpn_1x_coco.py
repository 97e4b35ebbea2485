# Fibottention ViT-S/16 + RetinaNet 1x on COCO. RetinaNet uses P3-P7: the backbone returns
# only strides 8/16/32 (no unused stride-4 branch) and FPN starts at level 0.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.FibottentionViT',
        arch='small',
        img_size=224,
        attn_mode='sparse',
        out_indices=(5, 8, 11),
        out_scales=(2, 1, 0.5),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/deit_small_patch16_224-cd65a155.pth')),
    neck=dict(in_channels=[384, 384, 384], start_level=0))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'pos_embed': dict(decay_mult=0.), 'cls_token': dict(decay_mult=0.)}))
