"""The fast H-MHSA attention core: ``torch.nn.functional.scaled_dot_product_attention``.

On CUDA, SDPA dispatches to fused kernels (FlashAttention when there is no
mask, the memory-efficient kernel with the padding mask); elsewhere it runs
PyTorch's own fused CPU or math implementation. Same contract as
:func:`mmsparse.ops.hmhsa.reference.attention_reference`.
"""
import torch.nn.functional as F


def attention_sdpa(q, k, v, scale, key_mask=None):
    """Fused softmax((q * scale) @ k^T) @ v.

    Args:
        q (Tensor): (B, heads, Lq, d).
        k, v (Tensor): (B, heads, Lk, d).
        scale (float): logit scale.
        key_mask (Tensor, optional): bool (B, 1, 1, Lk), True = attend.

    Returns:
        Tensor: (B, heads, Lq, d).
    """
    # Every fused kernel (flash, memory-efficient, CPU flash) needs a unit stride on the head
    # dim; token views of NCHW maps have stride H*W there and would fall back to the math kernel.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=scale)
