# Entry point: BiFormer-S + UperNet, ADE20K 160k, 512x512, the official recipe.
#   python tools/train.py configs/biformer/upernet_ade20k.py
_base_ = ['./upernet_biformer-s_8xb2-160k_ade20k-512x512.py']
