"""Channel shuffle: a permutation with a known mapping, and what it buys (Sec. 3.1, Fig. 1 of the paper)."""

import pytest
import torch
from torch import nn

from backbone import ChannelShuffle, ShuffleUnit, channel_shuffle


def _channels(c: int, n: int = 2, h: int = 3, w: int = 4) -> torch.Tensor:
    """(n, c, h, w) where every value of channel i equals i (plus a per-position offset to catch mixing)."""
    base = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1) * 1000
    return base + torch.arange(n * h * w, dtype=torch.float32).view(n, 1, h, w)


def test_shuffle_is_the_documented_permutation():
    x = _channels(6)
    out = channel_shuffle(x, 2)
    # groups (0, 1, 2) and (3, 4, 5) interleave: channel g * 3 + i lands at i * 2 + g.
    assert torch.equal(out, x[:, [0, 3, 1, 4, 2, 5]])
    assert torch.equal(channel_shuffle(x, 3), x[:, [0, 2, 4, 1, 3, 5]])
    # A permutation: the same multiset of values, shape unchanged.
    assert out.shape == x.shape
    assert torch.equal(out.flatten().sort().values, x.flatten().sort().values)


@pytest.mark.parametrize(("channels", "groups"), [(6, 2), (6, 3), (24, 4), (240, 3), (384, 8)])
def test_shuffle_by_g_then_c_over_g_restores_the_input(channels, groups):
    x = torch.randn(2, channels, 5, 3)
    shuffled = channel_shuffle(x, groups)
    if groups not in (1, channels):
        assert not torch.equal(shuffled, x)
    assert torch.equal(channel_shuffle(shuffled, channels // groups), x)


def test_one_group_is_the_identity():
    x = torch.randn(1, 5, 2, 2)
    assert torch.equal(channel_shuffle(x, 1), x)


@pytest.mark.parametrize("groups", [0, -1, 4, 5])
def test_invalid_groups_raise(groups):
    with pytest.raises(ValueError, match=f"groups={groups}"):
        channel_shuffle(torch.zeros(1, 6, 2, 2), groups)


def test_module_matches_function():
    x = torch.randn(3, 12, 4, 4)
    module = ChannelShuffle(4)
    assert torch.equal(module(x), channel_shuffle(x, 4))
    assert "groups=4" in repr(module)


def _groups_reached(net: nn.Module, in_channels: int, out_channels: int, groups: int) -> list[set[int]]:
    """For each output channel, the input groups whose gradient is nonzero."""
    torch.manual_seed(0)  # ReLUs could, in principle, silence a path on an unlucky input
    x = torch.randn(1, in_channels, 6, 6, requires_grad=True)
    out = net(x)
    reached = []
    for o in range(out_channels):
        (grad,) = torch.autograd.grad(out[:, o].sum(), x, retain_graph=True)
        per_group = grad.abs().view(groups, in_channels // groups, -1).sum(dim=(1, 2))
        reached.append({g for g in range(groups) if per_group[g] > 0})
    return reached


def _two_group_convs(in_channels: int, mid: int, out_channels: int, groups: int, shuffle: bool) -> nn.Module:
    first = nn.Conv2d(in_channels, mid, 1, groups=groups, bias=False)
    second = nn.Conv2d(mid, out_channels, 1, groups=groups, bias=False)
    for conv in (first, second):  # positive weights: a zero gradient can only mean "not connected"
        nn.init.uniform_(conv.weight, 0.1, 1.0)
    return nn.Sequential(first, ChannelShuffle(groups) if shuffle else nn.Identity(), second)


@pytest.mark.parametrize("groups", [2, 3, 4])
def test_shuffle_connects_every_output_to_every_input_group(groups):
    # Full mixing needs at least `groups` channels per group between the convs (true of every real unit).
    cin, mid, cout = 4 * groups, groups * groups, 3 * groups
    with_shuffle = _groups_reached(_two_group_convs(cin, mid, cout, groups, True), cin, cout, groups)
    assert all(r == set(range(groups)) for r in with_shuffle)
    without = _groups_reached(_two_group_convs(cin, mid, cout, groups, False), cin, cout, groups)
    # Fig. 1(a): stacked group convs keep each output group fed by its own input group only.
    assert without == [{o // (cout // groups)} for o in range(cout)]


@pytest.mark.parametrize("shuffle", [True, False])
def test_shuffle_unit_mixes_groups_only_with_shuffle(shuffle):
    groups, channels = 3, 48  # bottleneck 12: 4 channels per group
    unit = ShuffleUnit(channels, channels, stride=1, groups=groups, shuffle=shuffle).eval()
    reached = _groups_reached(unit, channels, channels, groups)
    if shuffle:
        assert all(r == set(range(groups)) for r in reached)
    else:
        assert reached == [{o // (channels // groups)} for o in range(channels)]
