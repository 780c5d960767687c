"""Run a detector over a dataset, timed, and gather the COCO results of every process on rank 0."""

import itertools
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from detector.data import collate
from detector.model import Detector

from .results import to_coco_results


def run_detector(
    detector: Detector,
    dataset,
    *,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool = True,
    workers: int = 0,
) -> tuple[list[dict], dict]:
    """Detections on the first ``limit`` images of ``dataset`` (all by default) as COCO results, and timing.

    ``dataset[i]`` is (float (3, H, W) image in 0..1 at its original size, {"image_id": int, ...}), as
    ``detector.data.CocoDetectionDataset`` gives in eval mode. Under an initialised torch.distributed each
    rank takes every world_size-th batch and rank 0 returns everyone's results in dataset order (the
    others return []), so the numbers equal one process's. Timing: "ms_per_image" and "images_per_second"
    count only ``predict`` in one process (the first batch is a warm-up, not counted when there are more);
    "wall_ms_per_image" and "wall_images_per_second" include data loading and all processes; plus the
    batch size, threads, device and world size.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if detector.training:
        raise RuntimeError("call .eval() before run_detector()")
    count = len(dataset) if limit is None else min(limit, len(dataset))
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    # Shard whole batches (rank r takes batches r, r + world, ...): each image then meets the same batch-mates,
    # hence the same padding, as in one process, so the detections are identical, not merely close.
    batches = [list(range(s, min(s + batch_size, count))) for s in range(0, count, batch_size)][rank::world]
    indices = [i for batch in batches for i in batch]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate)
    device = _device(detector)

    per_image: list[tuple[int, list[dict]]] = []  # (dataset index, that image's results)
    model_seconds, timed_images, done = 0.0, 0, 0
    start = time.perf_counter()
    with tqdm(total=len(indices), desc="evaluating", unit="img", disable=not progress or rank != 0) as bar:
        for images, targets in loader:
            images = [image.to(device, non_blocking=True) for image in images]
            _sync(device)
            t0 = time.perf_counter()
            outputs = detector.predict(images)
            _sync(device)
            elapsed = time.perf_counter() - t0
            if done > 0 or len(batches) == 1:  # the first batch is a warm-up when there are more
                model_seconds += elapsed
                timed_images += len(images)
            ids = [int(t["image_id"]) for t in targets]
            for output, image_id in zip(outputs, ids, strict=True):
                per_image.append((indices[len(per_image)], to_coco_results([output], [image_id], detector.categories)))
            done += 1
            bar.update(len(images))
    wall_seconds = time.perf_counter() - start

    timing = {
        "images": len(indices),
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "world_size": world,
        "model_seconds": model_seconds,
        "timed_images": timed_images,
        "wall_seconds": wall_seconds,
    }
    if world > 1:
        per_image, timing = _gather(per_image, timing, rank, world)  # rank > 0: nothing, its own timing
    _add_rates(timing)
    per_image.sort(key=lambda item: item[0])
    return [r for _, results in per_image for r in results], timing


def _device(module: torch.nn.Module) -> torch.device:
    """Where the module's weights live (CPU for a module without any)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gather(per_image: list, timing: dict, rank: int, world: int) -> tuple[list, dict]:
    """Everyone's results and timings on rank 0; totals over ranks, wall time of the slowest."""
    gathered = [None] * world if rank == 0 else None
    dist.gather_object((per_image, timing), gathered, dst=0)
    if rank != 0:
        return [], timing
    all_images = [item for images, _ in gathered for item in images]
    timings = [t for _, t in gathered]
    total = dict(timing)
    for key in ("images", "model_seconds", "timed_images"):
        total[key] = sum(t[key] for t in timings)
    total["wall_seconds"] = max(t["wall_seconds"] for t in timings)
    return all_images, total


def _add_rates(timing: dict) -> None:
    """Per-process model speed (ms/image, images/s) and the overall wall-clock throughput."""
    timed, seconds = timing["timed_images"], timing["model_seconds"]
    timing["ms_per_image"] = 1000 * seconds / timed if timed else None
    timing["images_per_second"] = timed / seconds if seconds > 0 else None
    wall, images = timing["wall_seconds"], timing["images"]
    timing["wall_ms_per_image"] = 1000 * wall / images if images else None
    timing["wall_images_per_second"] = images / wall if wall > 0 else None
