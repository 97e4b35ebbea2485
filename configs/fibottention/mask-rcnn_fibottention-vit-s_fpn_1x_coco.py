# Fibottention ViT-S/16 + Mask R-CNN (FPN) 1x on COCO, stock 1x schedule with AdamW.
# The simple feature pyramid gives FPN the strides 4/8/16/32 it expects.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
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
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'pos_embed': dict(decay_mult=0.),
        'cls_token': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }))
