# The quick start on a CPU: the entry config (BiFormer + UperNet, ADE20K recipe) on the
# synthetic shapes data of tools/misc/generate_synthetic_data.py (--out data), with its
# own 7 classes, BiFormer-T from scratch, 96x96 crops and a 200-iteration schedule.
#   python tools/misc/generate_synthetic_data.py --out data
#   python tools/train.py configs/biformer/upernet_biformer-t_1xb4-200it_synthetic-ade20k-96x96.py
_base_ = ['./upernet_ade20k.py']

data_root = 'data/ade/ADEChallengeData2016'
dataset_type = 'mmsparse.SyntheticADE20KDataset'
num_classes = 7  # len(mmsparse.datasets.SYNTHETIC_SEG_CLASSES)
crop_size = (96, 96)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='tiny', n_win=4, drop_path_rate=0.0, init_cfg=None),
    decode_head=dict(channels=64, num_classes=num_classes),
    auxiliary_head=dict(channels=32, num_classes=num_classes))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=20, end=200),
]
train_cfg = dict(max_iters=200, val_interval=200)
default_hooks = dict(checkpoint=dict(interval=200))
