# HAT-Net-S + Mask R-CNN 1x on COCO, PVT's recipe (whai362/PVT mask_rcnn_pvt_*_fpn_1x_coco.py),
# which the HAT-Net paper follows: AdamW lr 2e-4, wd 1e-4, stock 1x schedule, 8 GPUs x 2 images.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.HATNet',
        arch='small',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/HAT-Net_Small.pth')),
    neck=dict(in_channels=[64, 128, 320, 512]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4))
