import torch
import torch.nn.functional as F


def resize_pos_embed(pos_embed, src_grid, dst_grid, num_extra_tokens=1):
    """Bicubically resize a learned absolute position embedding to a new token grid.

    The leading ``num_extra_tokens`` entries (CLS) are kept apart and unchanged,
    as in MAE's ``interpolate_pos_embed``.

    Args:
        pos_embed (Tensor): (1, num_extra_tokens + sh*sw, C).
        src_grid (tuple[int, int]): (sh, sw) of ``pos_embed``.
        dst_grid (tuple[int, int]): (dh, dw) wanted.
        num_extra_tokens (int): tokens before the grid.

    Returns:
        Tensor: (1, num_extra_tokens + dh*dw, C); ``pos_embed`` itself when the
        grids are equal.
    """
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    expected = num_extra_tokens + src_grid[0] * src_grid[1]
    if pos_embed.dim() != 3 or pos_embed.shape[1] != expected:
        raise ValueError(f'pos_embed.shape={tuple(pos_embed.shape)} does not match src_grid={src_grid} '
                         f'with num_extra_tokens={num_extra_tokens} (expected (1, {expected}, C))')
    # A symbolic grid (a dynamic torch.export) is always resized: comparing it with src_grid
    # would bake the traced size's branch into the graph (bicubic to the same size is the identity).
    if all(isinstance(s, int) for s in dst_grid) and src_grid == dst_grid:
        return pos_embed
    extra, grid = pos_embed[:, :num_extra_tokens], pos_embed[:, num_extra_tokens:]
    grid = grid.reshape(1, *src_grid, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=dst_grid, mode='bicubic', align_corners=False)
    return torch.cat([extra, grid.flatten(2).transpose(1, 2)], dim=1)
