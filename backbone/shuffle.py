"""Channel shuffle (ShuffleNet, Zhang et al. 2017, Sec. 3.1)."""

from torch import Tensor, nn


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``x`` (N, C, H, W) across ``groups``.

    Channel ``g * (C // groups) + i`` moves to ``i * groups + g``: reshape to (groups, C // groups),
    transpose, flatten. A pure permutation, so it is differentiable and costs no multiply-adds.
    """
    n, c, h, w = x.shape
    if groups < 1 or c % groups:
        raise ValueError(f"channel_shuffle: {c} channels cannot be split into groups={groups}")
    if groups == 1:
        return x
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
