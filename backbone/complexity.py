"""Multiply-adds and parameters, counted the way the ShuffleNet paper counts "FLOPs".

Only convolutions and fully connected layers are counted (one multiply-add each per weight use); BN, ReLU,
pooling, shuffle and element-wise adds are free, as in the paper. Run as
``python -m backbone.complexity [--json] [NAME ...]`` for the named registered backbones (default: every one)
at 224x224.
"""

import argparse
import json
import sys
from collections.abc import Callable

import torch
from torch import nn

from .cli import HelpFormatter
from .registry import BACKBONES, create_backbone


def count_macs(model: nn.Module, run: Callable[[], object]) -> int:
    """Multiply-adds of every Conv2d and Linear while ``run()`` executes ``model`` once."""
    return sum(count_macs_by_part({"all": model}, run).values())


def count_macs_by_part(parts: dict[str, nn.Module], run: Callable[[], object]) -> dict[str, int]:
    """Multiply-adds of the Conv2d and Linear layers inside each named part during one ``run()``."""
    totals = dict.fromkeys(parts, 0)

    def hook_for(part: str):
        def hook(module: nn.Module, _inputs, output) -> None:
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                totals[part] += output.numel() * (module.in_channels // module.groups) * kh * kw
            else:
                totals[part] += output.numel() * module.in_features

        return hook

    handles = [
        m.register_forward_hook(hook_for(part))
        for part, module in parts.items()
        for m in module.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return totals


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def backbone_complexity(name: str, size: int = 224) -> dict:
    """One row of the table: the classifier (with FC) at ``size`` x ``size``, batch 1."""
    spec = BACKBONES[name]
    # On the meta device: shapes without arithmetic or weight init, which is all a count needs.
    with torch.device("meta"):
        model = create_backbone(name).eval()
    x = torch.zeros(1, 3, size, size, device="meta")
    macs = count_macs(model, lambda: model(x))
    return {
        "name": name,
        "arch": spec.arch,
        "groups": spec.groups,
        "scale": spec.scale,
        "input_size": size,
        "mflops": round(macs / 1e6, 2),
        "params": count_params(model),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backbone.complexity",
        description="Multiply-adds (the paper's FLOPs) and parameters of every ShuffleNet configuration.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="registered backbones to count (default: every one, as listed)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--size", type=int, default=224, help="square input size")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size < 32:
        parser.error(f"--size must be at least 32, got {args.size}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be positive, got {args.threads}")
    unknown = [name for name in args.names if name not in BACKBONES]
    if unknown:
        parser.error(f"unknown backbone {', '.join(unknown)}; choose from {', '.join(BACKBONES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [backbone_complexity(name, args.size) for name in args.names or BACKBONES]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'backbone':<24} {'groups':>6} {'scale':>6} {'MFLOPs':>9} {'params':>11}")
    for r in rows:
        print(f"{r['name']:<24} {r['groups'] or '-':>6} {r['scale']:>6} {r['mflops']:>9.1f} {r['params']:>11,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
