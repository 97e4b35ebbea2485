# BiFormer-S + RetinaNet 1x on COCO (official retinanet.1x.biformer_small.py, the WaveViT recipe).
# The official FPN skips the stride-4 map (start_level=1); here the backbone does not return
# it at all, which builds the same P3-P7 pyramid without unused parameters under DDP.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmsparse.BiFormer',
        arch='small',
        n_win=16,
        topks=(1, 4, 16, -1),
        auto_pad=True,
        out_indices=(1, 2, 3),
        norm_eval=True,
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/biformer_small_in1k.pth')),
    neck=dict(in_channels=[128, 256, 512], start_level=0))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))
