"""torchrun plumbing: one process per device, NCCL on GPUs and gloo on CPUs; a no-op in a lone process."""

import os

import torch
import torch.distributed as td
from torch import nn


def init_from_env(device: str) -> None:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR...)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not td.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        td.init_process_group(backend)


def device_for(device: str) -> torch.device:
    """This process's device: under torchrun each process takes the GPU of its LOCAL_RANK."""
    if device.startswith("cuda") and td.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def rank() -> int:
    return td.get_rank() if td.is_initialized() else 0


def world() -> int:
    return td.get_world_size() if td.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if td.is_initialized():
        td.barrier()


def gather(obj: object) -> list | None:
    """Every rank's ``obj`` on rank 0, in rank order (None on the others); ``[obj]`` in a lone process.
    A collective: every rank must call it."""
    if not td.is_initialized():
        return [obj]
    gathered = [None] * world() if is_main() else None
    td.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (``obj`` itself in a lone process). A collective: every rank must call it."""
    if not td.is_initialized():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel when in a process group, else the model itself."""
    if not td.is_initialized():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def log_main(message: str) -> None:
    if is_main():
        print(message, flush=True)


def shutdown() -> None:
    if td.is_initialized():
        td.destroy_process_group()
