# Not in the paper: DiNAT-T + RetinaNet 1x on COCO (the NAT-T config, COCO dilations).
_base_ = ['./retinanet_nat-t_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        dilations=[[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]],
        init_cfg=dict(checkpoint='pretrain/dinat_tiny_in1k_224.pth')))
