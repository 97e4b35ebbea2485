"""Pure-PyTorch Fibottention: the readable specification, and its two exact torch algorithms.

Rahimian et al., "Fibottention", arXiv 2406.19391; the two masking modes and the
V-sum rewrite are written out in ``docs/design.md`` ("Fibottention: the two masking
modes").

* :func:`fibottention_gather` (the specification): patch queries gather only their
  kept keys (CLS plus the pattern's neighbours), so memory grows with the number of
  kept entries, ``O(B * heads * N * K * D)``, never with ``N**2``. The CLS query is a
  dense row. Logits and outputs are batched matmuls over the gathered keys and values
  (no elementwise product of the same size), and the CLS key and the official rest
  term are added apart, so K and V are each gathered once and nothing else of that size
  is built.
* :func:`fibottention_dense`: the dense masked computation, one ``(T, T)`` logit
  matmul per (batch, head) with the pattern's mask (built once per pattern, device and
  dtype, :meth:`FibPattern.dense_mask`). Cheaper on CPU for short sequences
  (``mmsparse.ops._dispatch.DENSE_BELOW_TOKENS``).

``mode='official'`` reproduces the official multiplicative mask (masked logits
are 0, not ``-inf``). The gather algorithm does it through the V-sum rewrite: the ``n_i``
masked keys of row ``i`` all have logit 0, so together they act as one extra key with
logit ``log(n_i)`` and value ``(sum_all v - sum_kept v) / n_i``.
"""
import torch
import torch.nn.functional as F


def neighbor_index(pattern, device=None):
    """Key patch index of every (head, query, displacement) and whether it is kept.

    Args:
        pattern (FibPattern): the layer's pattern.
        device (torch.device, optional): where to build; defaults to the pattern's.

    Returns:
        tuple[Tensor, Tensor]: ``index`` (heads, N, K) int64 (0 where not kept)
        and ``valid`` (heads, N, K) bool, with ``N = gh * gw`` patch tokens.
    """
    gh, gw = pattern.grid
    device = pattern.displacements.device if device is None else device
    disp = pattern.displacements.to(device=device, dtype=torch.int64)
    r = torch.arange(gh * gw, device=device)
    ny = (r // gw)[None, :, None] + disp[:, None, :, 0]
    nx = (r % gw)[None, :, None] + disp[:, None, :, 1]
    in_table = torch.arange(disp.shape[1], device=device) < pattern.counts.to(device)[:, None]
    valid = (ny >= 0) & (ny < gh) & (nx >= 0) & (nx < gw) & in_table[:, None, :]
    return torch.where(valid, ny * gw + nx, 0), valid


def _gather(x, index):
    """(B, heads, N, D) patch tokens at ``index`` (heads, R, K) -> (B, heads, R, K, D)."""
    heads = torch.arange(x.shape[1], device=x.device)[:, None, None]
    return x[:, heads, index]


def _cls_probs(q, k, scale):
    """Softmax of the dense CLS query row: (B, heads, 1, T)."""
    return ((q[:, :, :1] @ k.transpose(-1, -2)) * scale).softmax(-1)


def _patch_logits(q, k, index, valid, scale, mode, with_cls):
    """Logits of patch query rows over their entries ``[CLS] + K slots + [rest]``.

    Args:
        q (Tensor): (B, heads, R, D) the patch queries.
        k (Tensor): (B, heads, T, D) all keys (CLS first when ``with_cls``).
        index, valid (Tensor): (heads, R, K) the rows of :func:`neighbor_index`.
        scale (float), mode (str), with_cls (bool): as the op.

    Returns:
        tuple[Tensor, Tensor | None]: ``logits`` (B, heads, R, S) with ``S = with_cls +
        K + (mode == 'official')``: the CLS key, the kept slots (``-inf`` where not
        kept) and, in official mode, the rest term of logit ``log(n_i)``; and ``n_i``
        (heads, R), the masked key count of every row (official mode), else None.
    """
    c = int(with_cls)
    k_nb = _gather(k[:, :, c:], index)                                        # (B, heads, R, K, D)
    logits = (k_nb @ q.unsqueeze(-1)).squeeze(-1).mul(scale).masked_fill(~valid, float('-inf'))
    parts = [logits]
    if with_cls:
        parts.insert(0, (q @ k[:, :, :1].transpose(-1, -2)) * scale)
    n_masked = None
    if mode == 'official':
        n_masked = k.shape[2] - c - valid.sum(-1)                            # (heads, R)
        parts.append(n_masked.to(q.dtype).log().expand_as(logits[..., 0]).unsqueeze(-1))  # log(0) = -inf
    return torch.cat(parts, dim=-1) if len(parts) > 1 else logits, n_masked


def _row_softmax(logits, may_be_empty):
    """Softmax over the last dim; a row of only ``-inf`` (no kept key) gets all-zero weights."""
    if not may_be_empty:
        return logits.softmax(-1)
    empty = (logits == float('-inf')).all(-1, keepdim=True)
    return logits.masked_fill(empty, 0.).softmax(-1).masked_fill(empty, 0.)


def fibottention_gather(q, k, v, index, valid, scale, mode='sparse', with_cls=True):
    """Fibottention by gathering the kept keys of every patch query (the specification).

    Args:
        q, k, v (Tensor): (B, heads, T, D); ``T = N + with_cls``.
        index, valid (Tensor): (heads, N, K) from :func:`neighbor_index`.
        scale (float): logit scale.
        mode (str): ``'sparse'`` (masked logits -inf) or ``'official'`` (masked
            logits 0).
        with_cls (bool): token 0 is CLS (dense row, kept column).

    Returns:
        Tensor: (B, heads, T, D).
    """
    c = int(with_cls)
    logits, n_masked = _patch_logits(q[:, :, c:], k, index, valid, scale, mode, with_cls)
    # Sparse mode without CLS may leave a row with no kept key: output 0, no NaN.
    probs = _row_softmax(logits, mode == 'sparse' and not with_cls)
    v_nb = _gather(v[:, :, c:], index)                                        # (B, heads, N, K, D)
    p_kept = probs[..., c:c + index.shape[-1]]
    if mode == 'official':   # one pass over v_nb: the output and the sum of the kept values
        weights = torch.stack([p_kept, valid.to(v.dtype).expand_as(p_kept)], dim=-2)
        out, kept_sum = (weights @ v_nb).unbind(-2)
        if with_cls:
            kept_sum = kept_sum + v[:, :, :1]
        rest = (v.sum(2, keepdim=True) - kept_sum) / n_masked.clamp(min=1)[..., None]
        out = out + probs[..., -1:] * rest
    else:
        out = (p_kept.unsqueeze(-2) @ v_nb).squeeze(-2)
    if not with_cls:
        return out
    out = out + probs[..., :1] * v[:, :, :1]
    return torch.cat([_cls_probs(q, k, scale) @ v, out], dim=2)


def fibottention_reference(q, k, v, pattern, scale, mode='sparse', with_cls=True):
    """:func:`fibottention_gather` on a pattern (its cached neighbour index on ``q.device``).

    Args:
        q, k, v (Tensor): (B, heads, T, D); ``T = N + with_cls``.
        pattern (FibPattern): kept displacements of every head.
        scale (float), mode (str), with_cls (bool): see :func:`fibottention_gather`.

    Returns:
        Tensor: (B, heads, T, D).
    """
    index, valid = pattern.to(q.device).neighbours()
    return fibottention_gather(q, k, v, index, valid, scale, mode, with_cls)


def fibottention_dense(q, k, v, mask, valid, scale, mode='sparse', with_cls=True):
    """Fibottention as dense masked attention: one (T, T) logit matmul, the pattern's mask.

    Same function as :func:`fibottention_gather`; the official mode is the official
    computation itself (masked logits set to 0).

    Args:
        q, k, v (Tensor): (B, heads, T, D).
        mask (Tensor): (heads, T, T) in q's dtype from :meth:`FibPattern.dense_mask` for
            this ``mode`` and ``with_cls``: in sparse mode SDPA's additive mask (0 or
            ``-inf``), in official mode multiplied with the scaled logits (1 or 0).
        valid (Tensor): (heads, N, K) from :func:`neighbor_index`; in sparse mode without
            CLS, its rows with no kept key are the rows to zero.
        scale (float), mode (str), with_cls (bool): see :func:`fibottention_gather`.

    Returns:
        Tensor: (B, heads, T, D).
    """
    if mode == 'sparse':
        # Fused SDPA with the additive mask; a 4-D mask keeps CPU SDPA on its fast kernel.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(0), scale=scale)
    else:
        # The logits are a fresh tensor: scale and mask them in place (the official
        # ``(q @ k^T) * scale * mask`` makes two more (T, T) tensors); the backward of the
        # matmul needs q and k, not its output. Same bits as the official order of operations.
        out = (q @ k.transpose(-1, -2)).mul_(scale).mul_(mask).softmax(-1) @ v
    if mode == 'sparse' and not with_cls:
        # dense_exclusion leaves the rows with no kept key unmasked (finite softmax and
        # gradients); the op defines their output as 0.
        out = out.masked_fill(~valid.any(-1)[..., None], 0.)
    return out


def fibottention_probabilities_reference(queries, q, k, index, valid, scale, mode='sparse', with_cls=True):
    """Softmax probabilities of selected queries, from :func:`fibottention_gather`'s own logits.

    Args:
        queries (Tensor): 1-D int64 token indices into the ``T`` tokens (0 = CLS when
            ``with_cls``).
        q, k (Tensor): (B, heads, T, D).
        index, valid (Tensor): (heads, N, K) from :func:`neighbor_index`.
        scale (float), mode (str), with_cls (bool): as the op.

    Returns:
        tuple[Tensor, Tensor]: ``probs`` (B, heads, Q, S) and ``key_index`` (B, heads,
        Q, S), the token index of each entry's key, -1 for an entry that is no key
        (probability 0). Sparse mode: a patch query's entries are the CLS key and its
        ``K`` slots (``S = with_cls + K``); official mode and the CLS query: the full row
        (``S = T``; the masked keys of a patch row share its rest weight equally); rows
        shorter than ``S`` are padded with -1 entries. Rows sum to 1, but
        for a patch row with no kept key (sparse mode without CLS), all zero.
    """
    bsz, heads, n_tokens, _ = q.shape
    c = int(with_cls)
    patch = queries >= c
    rows = queries[patch] - c
    logits, n_masked = _patch_logits(q[:, :, c:][:, :, rows], k, index[:, rows], valid[:, rows], scale, mode,
                                     with_cls)
    probs = _row_softmax(logits, mode == 'sparse' and not with_cls)
    keys = torch.where(valid[:, rows], index[:, rows] + c, -1)                 # (heads, R, K)
    if with_cls:
        keys = torch.cat([torch.zeros_like(keys[..., :1]), keys], dim=-1)
    if mode == 'official':
        # Spread the rest weight over the masked keys; kept keys overwrite theirs, and
        # the slots that are no key write to a spare column T that is dropped.
        rest = (probs[..., -1] / n_masked.clamp(min=1)).unsqueeze(-1)
        full = rest.expand(bsz, heads, len(rows), n_tokens + 1).clone()
        slots = torch.where(keys < 0, n_tokens, keys).expand(bsz, -1, -1, -1)
        probs = full.scatter(-1, slots, probs[..., :-1])[..., :n_tokens]
        keys = torch.arange(n_tokens, device=q.device).expand(heads, len(rows), n_tokens)
    width = max(probs.shape[-1], 0 if patch.all() else n_tokens)   # the CLS query has T entries
    out_probs = probs.new_zeros(bsz, heads, len(queries), width)
    out_keys = torch.full((bsz, heads, len(queries), width), -1, dtype=torch.long, device=q.device)
    out_probs[:, :, patch, :probs.shape[-1]] = probs
    out_keys[:, :, patch, :keys.shape[-1]] = keys
    if not patch.all():   # the CLS query: its dense row
        out_probs[:, :, ~patch, :n_tokens] = _cls_probs(q, k, scale)
        out_keys[:, :, ~patch, :n_tokens] = torch.arange(n_tokens, device=q.device)
    return out_probs, out_keys
