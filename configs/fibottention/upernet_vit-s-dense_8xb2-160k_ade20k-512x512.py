# Dense-attention baseline of upernet_fibottention-vit-s_8xb2-160k_ade20k-512x512.py:
# the same model, parameters, data and schedule; only the attention changes.
_base_ = ['./upernet_fibottention-vit-s_8xb2-160k_ade20k-512x512.py']

model = dict(backbone=dict(attention='dense'))
