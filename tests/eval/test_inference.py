"""run_detector: COCO results in dataset order, timing, and sharding over ranks that equals one process."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from detector.categories import Category, CategoryMap
from eval import inference

CATEGORIES = CategoryMap([Category(5, "odd"), Category(2, "even")])  # label 1 -> id 2, label 2 -> id 5


class ShadeDetector(nn.Module):
    """Detects one box per image whose label and score follow from the image's grey level."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # gives the detector a device
        self.categories = CATEGORIES
        self.calls: list[int] = []

    def predict(self, images: list[torch.Tensor]) -> list[dict]:
        self.calls.append(len(images))
        outputs = []
        for image in images:
            shade = float(image[0, 0, 0])
            h, w = image.shape[-2:]
            outputs.append(
                {
                    "boxes": torch.tensor([[1.0, 2.0, w - 1.0, h - 2.0]]),
                    "labels": torch.tensor([1 + round(shade * 10) % 2]),
                    "scores": torch.tensor([shade]),
                }
            )
        return outputs


def shades(n: int) -> list:
    return [(torch.full((3, 20 + i, 30), i / 10), {"image_id": 100 + i}) for i in range(n)]


def test_results_follow_the_dataset_and_the_category_map():
    detector = ShadeDetector().eval()
    results, timing = inference.run_detector(detector, shades(5), batch_size=2, limit=3, progress=False)
    assert [r["image_id"] for r in results] == [100, 101, 102]
    assert [r["category_id"] for r in results] == [2, 5, 2]
    assert results[2]["bbox"] == [1.0, 2.0, 28.0, 18.0]  # xywh of [1, 2, 29, 20] on the 22x30 image
    assert detector.calls == [2, 1]
    assert timing["images"] == 3 and timing["timed_images"] == 1  # the first batch is a warm-up
    assert timing["batch_size"] == 2 and timing["threads"] == torch.get_num_threads()
    assert timing["ms_per_image"] > 0 and timing["wall_images_per_second"] > 0


def fake_process_group(monkeypatch, rank: int, world: int, mailbox: dict) -> None:
    """torch.distributed as rank ``rank`` of ``world`` sees it; gather_object delivers through ``mailbox``."""

    def gather_object(obj, object_gather_list=None, dst=0):
        mailbox[rank] = obj
        if rank == dst:
            object_gather_list[:] = [mailbox[r] for r in range(world)]

    fake = SimpleNamespace(
        is_initialized=lambda: True, get_rank=lambda: rank, get_world_size=lambda: world, gather_object=gather_object
    )
    monkeypatch.setattr(inference, "dist", fake)


@pytest.mark.parametrize("world, batch_size", [(2, 1), (3, 2)])
def test_sharded_ranks_give_one_process_results(monkeypatch, world, batch_size):
    dataset = shades(7)
    alone, _ = inference.run_detector(ShadeDetector().eval(), dataset, batch_size=batch_size, progress=False)
    mailbox: dict = {}
    per_rank = {}
    for rank in reversed(range(world)):  # rank 0 last: it collects what the others sent
        fake_process_group(monkeypatch, rank, world, mailbox)
        detector = ShadeDetector().eval()
        per_rank[rank] = inference.run_detector(detector, dataset, batch_size=batch_size, progress=False)
        assert sum(detector.calls) < len(dataset)  # each rank saw only its share
    shares = [{i for i, _ in mailbox[r][0]} for r in range(world)]
    assert set().union(*shares) == set(range(7)) and sum(map(len, shares)) == 7  # disjoint and complete
    assert per_rank[0][0] == alone
    assert all(per_rank[r][0] == [] for r in range(1, world))
    assert per_rank[0][1]["images"] == 7 and per_rank[0][1]["world_size"] == world


def test_a_training_detector_is_refused():
    with pytest.raises(RuntimeError, match="eval"):
        inference.run_detector(ShadeDetector().train(), shades(1), progress=False)
