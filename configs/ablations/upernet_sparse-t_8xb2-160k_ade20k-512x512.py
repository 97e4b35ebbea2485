# Attention ablation base: SparseTransformer-T + UperNet, ADE20K 160k, 512x512, from scratch.
# Every upernet_sparse-t-<attention>_* child changes only model.backbone.attn_cfg, so the
# rows of tools/analysis_tools/run_ablation.py differ in the token mixer and nothing else.
# Recipe: Swin's UperNet schedule (AdamW 6e-5, wd 0.01, 1500-iteration warmup, linear decay),
# 8 GPUs x 2 images. The default token mixer is shifted 8x8 window attention (Swin).
_base_ = ['mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmsparse.models'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmsparse.SparseTransformer',
        arch='tiny',
        attn_cfg=dict(type='mmsparse.WindowAttention', window_size=8, shift='alternate'),
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=None),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]
train_dataloader = dict(batch_size=2)
