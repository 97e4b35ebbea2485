"""Pure-PyTorch Fibottention: the readable specification.

Rahimian et al., "Fibottention", arXiv 2406.19391; the two masking modes and the
V-sum rewrite are written out in ``docs/design.md`` ("Fibottention: the two masking
modes"). Patch queries gather only their kept keys
(CLS plus the pattern's neighbours), so memory grows with the number of kept
entries, ``O(B * heads * N * K * D)``, never with ``N**2``. The CLS query is a
dense row.

``mode='official'`` reproduces the official multiplicative mask (masked logits
are 0, not ``-inf``) through the V-sum rewrite: the ``n_i`` masked keys of row
``i`` all have logit 0, so together they act as one extra key with logit
``log(n_i)`` and value ``(sum_all v - sum_kept v) / n_i``.
"""
import torch


def neighbor_index(pattern, device=None):
    """Key patch index of every (head, query, displacement) and whether it is kept.

    Args:
        pattern (FibPattern): the layer's pattern.

    Returns:
        tuple[Tensor, Tensor]: ``index`` (heads, N, K) int64 (0 where not kept)
        and ``valid`` (heads, N, K) bool, with ``N = gh * gw`` patch tokens.
    """
    gh, gw = pattern.grid
    disp = pattern.displacements.to(device=device, dtype=torch.int64)
    r = torch.arange(gh * gw, device=device)
    ny = (r // gw)[None, :, None] + disp[:, None, :, 0]
    nx = (r % gw)[None, :, None] + disp[:, None, :, 1]
    in_table = torch.arange(disp.shape[1], device=device) < pattern.counts.to(device)[:, None]
    valid = (ny >= 0) & (ny < gh) & (nx >= 0) & (nx < gw) & in_table[:, None, :]
    return torch.where(valid, ny * gw + nx, 0), valid


def fibottention_reference(q, k, v, pattern, scale, mode='sparse', with_cls=True):
    """Fibottention by gathering the kept keys of every patch query.

    Args:
        q, k, v (Tensor): (B, heads, T, D); ``T = N + with_cls``.
        pattern (FibPattern): kept displacements of every head.
        scale (float): logit scale.
        mode (str): ``'sparse'`` (masked logits -inf) or ``'official'`` (masked
            logits 0).
        with_cls (bool): token 0 is CLS (dense row, kept column).

    Returns:
        Tensor: (B, heads, T, D).
    """
    index, valid = neighbor_index(pattern, q.device)            # (heads, N, K)
    c = int(with_cls)
    q_p, k_p, v_p = q[:, :, c:], k[:, :, c:], v[:, :, c:]
    heads = torch.arange(q.shape[1], device=q.device)[:, None, None]
    k_nb, v_nb = k_p[:, heads, index], v_p[:, heads, index]      # (B, heads, N, K, D)
    logits = (q_p.unsqueeze(3) * k_nb).sum(-1) * scale
    logits = logits.masked_fill(~valid, float('-inf'))
    values, slot_kept = v_nb, valid
    if with_cls:
        logits = torch.cat([(q_p @ k[:, :, :1].transpose(-1, -2)) * scale, logits], dim=-1)
        values = torch.cat([v[:, :, :1, None].expand(-1, -1, q_p.shape[2], -1, -1), values], dim=3)
        slot_kept = torch.cat([torch.ones_like(valid[..., :1]), valid], dim=-1)
    if mode == 'official':
        masked = q.shape[2] - slot_kept.sum(-1)                   # n_i: (heads, N)
        kept_sum = (values * slot_kept[..., None]).sum(3)
        rest = (v.sum(2, keepdim=True) - kept_sum) / masked.clamp(min=1)[..., None]
        uniform_logit = masked.to(logits.dtype).log().expand_as(logits[..., 0])   # log(n_i)
        logits = torch.cat([logits, uniform_logit[..., None]], dim=-1)
        values = torch.cat([values, rest.unsqueeze(3)], dim=3)
    # Sparse mode without CLS may leave a row with no kept key: output 0, no NaN.
    empty = (logits == float('-inf')).all(-1, keepdim=True)
    probs = logits.masked_fill(empty, 0.).softmax(-1).masked_fill(empty, 0.)
    out_patch = (probs.unsqueeze(-1) * values).sum(3)
    if not with_cls:
        return out_patch
    cls_probs = ((q[:, :, :1] @ k.transpose(-1, -2)) * scale).softmax(-1)
    return torch.cat([cls_probs @ v, out_patch], dim=2)
