"""Pure-PyTorch bi-level routing attention: the readable specification.

Follows the legacy BRA of BiFormer (Zhu et al., CVPR 2023, arXiv 2303.08810),
the op behind the released checkpoints. Tokens are grouped into ``n_win x n_win``
regions (row-major over regions, row-major inside a region). Each query region
attends to the tokens of its ``topk`` routed regions.
"""
import torch


def region_partition(x, n_win):
    """(N, H, W, C) -> (N, n_win**2, h*w, C) with h = H/n_win, w = W/n_win."""
    n, height, width, c = x.shape
    h, w = height // n_win, width // n_win
    x = x.reshape(n, n_win, h, n_win, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, n_win * n_win, h * w, c)


def region_merge(x, n_win, height, width):
    """Inverse of :func:`region_partition`: (N, n_win**2, h*w, C) -> (N, H, W, C)."""
    n, _, _, c = x.shape
    h, w = height // n_win, width // n_win
    x = x.reshape(n, n_win, n_win, h, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, height, width, c)


def route_regions(q, k, n_win, topk, scale):
    """Region-to-region routing shared by all heads.

    The region means of ``q`` and ``k`` are detached, so routing is a constant
    for autograd, as in the official op (``diff_routing=False``).

    Args:
        q, k (Tensor): (N, H, W, Cqk).
        n_win (int): regions per side.
        topk (int): routed regions per query region.
        scale (float): logit scale; it only matters for ties.

    Returns:
        Tensor: (N, n_win**2, topk) int64 region indices, by descending logit.
    """
    q_region = region_partition(q.detach(), n_win).mean(dim=2)
    k_region = region_partition(k.detach(), n_win).mean(dim=2)
    logits = (q_region * scale) @ k_region.transpose(-1, -2)
    return torch.topk(logits, topk, dim=-1).indices


def bra_attention_reference(q, k, v, region_index, num_heads, n_win, scale):
    """Token-to-token attention over the routed regions, per region and head.

    Args:
        q, k (Tensor): (N, H, W, Cqk), ``H`` and ``W`` divisible by ``n_win``.
        v (Tensor): (N, H, W, Cv).
        region_index (Tensor): (N, n_win**2, topk) int64 routed regions.
        num_heads (int): heads; channels are split into contiguous chunks.
        n_win (int): regions per side.
        scale (float): logit scale.

    Returns:
        Tensor: (N, H, W, Cv); channels head-major.
    """
    n, height, width, c_qk = q.shape
    c_v = v.shape[-1]
    num_regions, topk = region_index.shape[1:]
    q_r, k_r, v_r = (region_partition(t, n_win) for t in (q, k, v))
    tokens = q_r.shape[2]

    batch = torch.arange(n, device=q.device).view(n, 1, 1)
    k_sel = k_r[batch, region_index].reshape(n, num_regions, topk * tokens, c_qk)
    v_sel = v_r[batch, region_index].reshape(n, num_regions, topk * tokens, c_v)

    def heads(t):
        # Explicit head width: ``-1`` is ambiguous for an empty batch.
        return t.reshape(*t.shape[:3], num_heads, t.shape[-1] // num_heads).transpose(2, 3)

    attn = (heads(q_r) * scale) @ heads(k_sel).transpose(-1, -2)
    out = attn.softmax(dim=-1) @ heads(v_sel)
    out = out.transpose(2, 3).reshape(n, num_regions, tokens, c_v)
    return region_merge(out, n_win, height, width)
