# HAT-Net-T + RetinaNet 1x on COCO, PVT's recipe (whai362/PVT retinanet_pvt_*_fpn_1x_coco.py),
# which the HAT-Net paper follows. The stock 1x schedule (500-iter linear warmup, steps at
# epochs 8 and 11, 8 GPUs x 2 images) is PVT's. PVT's FPN skips the stride-4 map
# (start_level=1); here the backbone does not return it, which builds the same P3-P7 pyramid
# without unused parameters under DDP.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.HATNet',
        arch='tiny',
        out_indices=(1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/HAT-Net_Tiny.pth')),
    neck=dict(in_channels=[96, 240, 384], start_level=0))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))
