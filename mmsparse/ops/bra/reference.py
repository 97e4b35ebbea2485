"""Pure-PyTorch bi-level routing attention: the readable specification.

Follows the legacy BRA of BiFormer (Zhu et al., CVPR 2023, arXiv 2303.08810),
the op behind the released checkpoints. Tokens are grouped into ``n_win x n_win``
regions (row-major over regions, row-major inside a region). Each query region
attends to the tokens of its ``topk`` routed regions.

The torch backend computes the token attention with :func:`bra_attention_sdpa`: the same
gather, with the softmax attention fused by ``F.scaled_dot_product_attention`` instead of
the explicit logits of the specification.
"""
import torch
import torch.nn.functional as F


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


def routed_key_index(region_index, n_win, height, width):
    """Flat row-major ``H*W`` indices of the key tokens every query region attends to.

    Args:
        region_index (Tensor): (N, n_win**2, topk) int64 routed regions.
        n_win (int): regions per side.
        height, width (int): map size, divisible by ``n_win``.

    Returns:
        Tensor: (N, n_win**2, topk*h*w) int64: the tokens of the routed regions in routing
        order, row-major inside each region (the key order of the attention).
    """
    h, w = height // n_win, width // n_win
    device = region_index.device
    region = torch.arange(n_win * n_win, device=device)
    first = (region // n_win) * (h * width) + (region % n_win) * w
    inside = (torch.arange(h, device=device)[:, None] * width + torch.arange(w, device=device)).flatten()
    return (first[:, None] + inside)[region_index].flatten(-2)


def _gather_tokens(x, key_index):
    """(N, H, W, C) map, (N, R, K) flat indices -> (N, R, K, C) tokens."""
    batch = torch.arange(x.shape[0], device=x.device).view(-1, 1, 1)
    return x.flatten(1, 2)[batch, key_index]


def _split_heads(t, num_heads):
    """(N, R, T, C) -> (N, R, heads, T, C/heads); head ``m`` owns channel chunk ``m``."""
    # Explicit head width: ``-1`` is ambiguous for an empty batch.
    return t.reshape(*t.shape[:3], num_heads, t.shape[-1] // num_heads).transpose(2, 3)


def _routed_probabilities(q, k_sel, num_heads, n_win, scale):
    """Softmax attention of every query token over its region's routed keys.

    Args:
        q (Tensor): (N, H, W, Cqk).
        k_sel (Tensor): (N, n_win**2, K, Cqk), the routed keys of every region
            (:func:`_gather_tokens` at :func:`routed_key_index`).
        num_heads (int): heads.
        n_win (int): regions per side.
        scale (float): logit scale.

    Returns:
        Tensor: (N, n_win**2, heads, h*w, K).
    """
    attn = _split_heads(region_partition(q, n_win), num_heads) @ _split_heads(k_sel, num_heads).transpose(-1, -2)
    # The matmul output is a fresh tensor: scaling it in place spares a scaled copy of q.
    return attn.mul_(scale).softmax(dim=-1)


def bra_probabilities_reference(q, k, region_index, num_heads, n_win, scale):
    """The attention probabilities of :func:`bra_attention_reference`, with their keys.

    Args:
        q, k (Tensor): (N, H, W, Cqk).
        region_index (Tensor): (N, n_win**2, topk) int64 routed regions.
        num_heads (int): heads.
        n_win (int): regions per side.
        scale (float): logit scale.

    Returns:
        tuple[Tensor, Tensor]: probabilities (N, n_win**2, heads, h*w, topk*h*w) and
        the flat ``H*W`` key index (N, n_win**2, topk*h*w) of their last axis.
    """
    key_index = routed_key_index(region_index, n_win, *q.shape[1:3])
    return _routed_probabilities(q, _gather_tokens(k, key_index), num_heads, n_win, scale), key_index


def _routed_keys_and_values(k, v, region_index, n_win):
    """(N, n_win**2, K, Cqk) keys and (N, n_win**2, K, Cv) values of every region's routed regions."""
    height, width = k.shape[1:3]
    # One gather for keys and values: they share the routed token index.
    kv_sel = _gather_tokens(torch.cat((k, v), dim=-1), routed_key_index(region_index, n_win, height, width))
    return kv_sel.split((k.shape[-1], v.shape[-1]), dim=-1)


def _merge_heads(out, n_win, height, width):
    """(N, n_win**2, heads, h*w, Cv/heads) -> (N, H, W, Cv)."""
    out = out.transpose(2, 3)   # explicit channels: ``-1`` is ambiguous for an empty batch
    return region_merge(out.reshape(*out.shape[:3], out.shape[3] * out.shape[4]), n_win, height, width)


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
    k_sel, v_sel = _routed_keys_and_values(k, v, region_index, n_win)
    attn = _routed_probabilities(q, k_sel, num_heads, n_win, scale)
    return _merge_heads(attn @ _split_heads(v_sel, num_heads), n_win, *q.shape[1:3])


def bra_attention_sdpa(q, k, v, region_index, num_heads, n_win, scale):
    """:func:`bra_attention_reference` with the attention of each region and head fused by
    ``F.scaled_dot_product_attention`` (same arguments and result up to float rounding).

    On CPU the fused kernel never holds the (regions, heads, h*w, topk*h*w) logits and
    probabilities: against the explicit matmul-softmax it takes 0.75-0.9 of the forward time
    and 0.7-0.8 of the training step at BiFormer's stage sizes (docs/benchmarks.md).
    """
    k_sel, v_sel = _routed_keys_and_values(k, v, region_index, n_win)
    q_heads = _split_heads(region_partition(q, n_win), num_heads)       # (N, R, heads, h*w, d)
    k_heads, v_heads = _split_heads(k_sel, num_heads), _split_heads(v_sel, num_heads)
    # 4-D (N*R, heads, tokens, d): the layout of SDPA's fused CPU kernel.
    out = F.scaled_dot_product_attention(q_heads.flatten(0, 1), k_heads.flatten(0, 1), v_heads.flatten(0, 1),
                                         scale=scale)
    return _merge_heads(out.unflatten(0, q_heads.shape[:2]), n_win, *q.shape[1:3])
