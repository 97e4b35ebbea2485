# BiFormer-S + Mask R-CNN 1x on COCO (official maskrcnn.1x.biformer_small.py).
# The stock 1x schedule (500-iter linear warmup, steps at epochs 8 and 11) is the official one.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.BiFormer',
        arch='small',
        n_win=16,
        topks=(1, 4, 16, -1),
        auto_pad=True,
        out_indices=(0, 1, 2, 3),
        norm_eval=True,
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/biformer_small_in1k.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
