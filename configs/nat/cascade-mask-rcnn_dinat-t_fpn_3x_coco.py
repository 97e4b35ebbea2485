# DiNAT-T + Cascade Mask R-CNN 3x on COCO (official cascade_mask_rcnn_dinat_tiny_3x_coco.py):
# the NAT-T config with the COCO dilations.
_base_ = ['./cascade-mask-rcnn_nat-t_fpn_3x_coco.py']

model = dict(
    backbone=dict(
        dilations=[[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]],
        init_cfg=dict(checkpoint='pretrain/dinat_tiny_in1k_224.pth')))
