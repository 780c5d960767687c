"""detector.data on the real coco128 sample: exact targets, crowd and empty images, flips, batching, errors."""

import json
import random
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler, RandomSampler

from detector.data import (
    ZOOM_OUT_MAX,
    CocoDetectionDataset,
    DatasetError,
    GroupedBatchSampler,
    RepeatFactorSampler,
    aspect_ratio_groups,
    make_loader,
    missing_images,
    repeat_factors,
    set_epoch,
)

REPO = Path(__file__).resolve().parents[2]
GRAYSCALE_ID, EMPTY_IDS = 86, (250, 508)


@pytest.fixture(scope="module")
def instances(coco128: Path) -> dict:
    """coco128's annotation file read with plain json: the reference the dataset is checked against."""
    return json.loads((coco128 / "instances.json").read_text())


@pytest.fixture(scope="module")
def expected(instances: dict) -> dict[int, list[tuple[int, list[float]]]]:
    """image id -> [(label, [x1, y1, x2, y2])] of its non-crowd boxes, labels counted 1.. in id order."""
    label = {cid: i + 1 for i, cid in enumerate(sorted(c["id"] for c in instances["categories"]))}
    boxes = defaultdict(list)
    for a in instances["annotations"]:
        if not a["iscrowd"]:
            x, y, w, h = a["bbox"]
            boxes[a["image_id"]].append((label[a["category_id"]], [x, y, x + w, y + h]))
    return boxes


@pytest.fixture(scope="module")
def eval_set(coco128: Path) -> CocoDetectionDataset:
    return CocoDetectionDataset(coco128 / "images", coco128 / "instances.json", train=False)


def _item(dataset: CocoDetectionDataset, image_id: int):
    return dataset[dataset.ids.index(image_id)]


def test_loader_returns_the_annotated_boxes_and_labels(eval_set, expected, instances):
    loader = make_loader(eval_set, batch_size=8, train=False, workers=0)
    seen = {}
    for images, targets in loader:
        assert len(images) == len(targets) <= 8
        for image, target in zip(images, targets, strict=True):
            seen[target["image_id"]] = (image, target)
    assert sorted(seen) == sorted(im["id"] for im in instances["images"])
    for image_id in (9, 86, 149, 650):  # a crowded scene, the grayscale image, one with a crowd region, two objects
        image, target = seen[image_id]
        want = expected[image_id]
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["labels"].tolist() == [label for label, _ in want]
        torch.testing.assert_close(target["boxes"], torch.tensor([box for _, box in want]), rtol=0, atol=1e-4)
        info = next(im for im in instances["images"] if im["id"] == image_id)
        assert target["orig_size"] == (info["height"], info["width"])
        assert image.shape == (3, info["height"], info["width"]) and image.dtype == torch.float32


def test_crowd_regions_are_left_out(eval_set, expected, instances):
    crowd = [a for a in instances["annotations"] if a["iscrowd"]]
    assert len(crowd) == 10
    for image_id in {a["image_id"] for a in crowd}:
        _, target = _item(eval_set, image_id)
        assert len(target["boxes"]) == len(expected[image_id])
        for a in (a for a in crowd if a["image_id"] == image_id):
            x, y, w, h = a["bbox"]
            distance = (target["boxes"] - torch.tensor([x, y, x + w, y + h])).abs().sum(dim=1)
            assert (distance > 1e-3).all(), f"crowd box of image {image_id} is among the targets"


def test_images_without_boxes_are_negatives(eval_set):
    for image_id in EMPTY_IDS:
        image, target = _item(eval_set, image_id)
        assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
        assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
        assert image.shape[0] == 3


def test_grayscale_image_becomes_three_equal_channels(eval_set, coco128):
    from PIL import Image

    with Image.open(coco128 / "images" / "000000000086.jpg") as file:
        assert file.mode == "L"  # the fixture really is one-channel
    image, _ = _item(eval_set, GRAYSCALE_ID)
    assert image.shape == (3, 640, 512)
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.5
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_category_map_round_trips_all_80_coco_ids(eval_set, instances):
    ids = [c["id"] for c in instances["categories"]]
    assert len(ids) == 80
    categories = eval_set.categories
    assert sorted(categories.label(i) for i in ids) == list(range(1, 81))
    assert all(categories.category_id(categories.label(i)) == i for i in ids)
    assert categories.num_classes == 81


def test_horizontal_flip_flips_image_and_boxes(coco128, eval_set):
    train_set = CocoDetectionDataset(coco128 / "images", coco128 / "instances.json", train=True)
    index = eval_set.ids.index(650)
    reference, ref_target = eval_set[index]
    width = reference.shape[-1]
    outcomes = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, target = train_set[index]
        boxes = target["boxes"]
        if torch.equal(image, reference):
            torch.testing.assert_close(boxes, ref_target["boxes"])
            outcomes.add("kept")
        else:
            assert torch.equal(image, reference.flip(-1))
            x1, y1, x2, y2 = ref_target["boxes"].unbind(1)
            torch.testing.assert_close(boxes, torch.stack([width - x2, y1, width - x1, y2], dim=1))
            outcomes.add("flipped")
        assert torch.equal(target["labels"], ref_target["labels"])
    assert outcomes == {"kept", "flipped"}


def test_no_flips_when_hflip_is_zero(coco128, eval_set):
    train_set = CocoDetectionDataset(coco128 / "images", coco128 / "instances.json", train=True, hflip=0)
    index = eval_set.ids.index(650)
    reference, ref_target = eval_set[index]
    for seed in range(6):
        torch.manual_seed(seed)
        image, target = train_set[index]
        assert torch.equal(image, reference) and torch.equal(target["boxes"], ref_target["boxes"])


def test_random_crop_is_a_window_of_the_image_with_its_boxes_shifted(coco128, eval_set):
    train_set = CocoDetectionDataset(coco128 / "images", coco128 / "instances.json", train=True, hflip=0, crop=1.0)
    index = eval_set.ids.index(650)
    reference, ref_target = eval_set[index]
    cropped = 0
    for seed in range(8):
        torch.manual_seed(seed)
        image, target = train_set[index]
        height, width = image.shape[-2:]
        # Where the window lies in the photo: the one place it matches exactly.
        found = cv2.matchTemplate(reference.permute(1, 2, 0).numpy(), image.permute(1, 2, 0).numpy(), cv2.TM_SQDIFF)
        top, left = np.unravel_index(found.argmin(), found.shape)
        assert torch.equal(image, reference[:, top : top + height, left : left + width])
        cropped += (height, width) != tuple(reference.shape[-2:])
        boxes = target["boxes"]
        assert len(boxes) > 0 and (boxes[:, 2:] - boxes[:, :2] > 1).all()
        assert (boxes[:, 0::2] <= width).all() and (boxes[:, 1::2] <= height).all() and (boxes >= 0).all()
        # Each box kept is an original box moved into the window and clipped to it, with its label.
        moved = ref_target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
        moved[:, 0::2], moved[:, 1::2] = moved[:, 0::2].clamp(0, width), moved[:, 1::2].clamp(0, height)
        for box, label in zip(boxes, target["labels"], strict=True):
            same = (moved - box).abs().max(dim=1).values < 1e-3
            assert same.any() and label in ref_target["labels"][same]
    assert cropped >= 3  # RandomIoUCrop leaves the photo whole in one draw of six


def test_zoom_out_puts_the_photo_on_a_canvas_of_the_mean_with_its_boxes_shifted(coco128, eval_set):
    mean = (0.2, 0.4, 0.6)
    train_set = CocoDetectionDataset(
        coco128 / "images", coco128 / "instances.json", train=True, hflip=0, zoom_out=1.0, fill=mean
    )
    index = eval_set.ids.index(650)
    reference, ref_target = eval_set[index]
    height, width = reference.shape[-2:]
    sides = set()
    for seed in range(6):
        torch.manual_seed(seed)
        image, target = train_set[index]
        canvas_h, canvas_w = image.shape[-2:]
        assert height <= canvas_h <= ZOOM_OUT_MAX * height and width <= canvas_w <= ZOOM_OUT_MAX * width
        sides.add(canvas_h / height)
        found = cv2.matchTemplate(image.permute(1, 2, 0).numpy(), reference.permute(1, 2, 0).numpy(), cv2.TM_SQDIFF)
        top, left = np.unravel_index(found.argmin(), found.shape)
        assert torch.equal(image[:, top : top + height, left : left + width], reference)
        # Everywhere else is the fill, as uint8 levels; the boxes moved with the photo, all kept, labels alike.
        outside = torch.ones(canvas_h, canvas_w, dtype=torch.bool)
        outside[top : top + height, left : left + width] = False
        levels = torch.tensor([round(255 * c) for c in mean], dtype=torch.float32)
        assert torch.equal((255 * image[:, outside]).round(), levels[:, None].expand(3, int(outside.sum())))
        shift = torch.tensor([left, top, left, top], dtype=torch.float32)
        assert torch.allclose(target["boxes"], ref_target["boxes"] + shift)
        assert torch.equal(target["labels"], ref_target["labels"])
    assert len(sides) == 6 and max(sides) > 1.2  # drawn anew each time, up to twice the sides


def _check_batches(batches, group_ids, batch_size):
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    assert all(len(batch) == batch_size for batch in batches[:-1]), "only the last batch may be short"
    mixed = [batch for batch in batches if len({group_ids[i] for i in batch}) > 1]
    assert len(mixed) <= 1, f"batches {mixed} mix aspect groups"  # at most the one joining the remainders
    assert len(batches) == -(-sum(map(len, batches)) // batch_size)


def test_grouped_sampler_keeps_groups_apart_and_covers_every_index_once():
    rng = random.Random(0)
    ratios = [rng.choice([0.75, 1.0, 1.33, 0.5, 1.5]) for _ in range(101)]
    groups = aspect_ratio_groups(ratios)
    assert groups == [0 if r >= 1 else 1 for r in ratios]
    sampler = GroupedBatchSampler(RandomSampler(range(101), generator=torch.Generator().manual_seed(0)), groups, 4)
    for _ in range(2):  # two epochs, different orders
        batches = list(sampler)
        _check_batches(batches, groups, 4)
        assert sorted(i for b in batches for i in b) == list(range(101))
    assert len(sampler) == len(batches)

    # Over DDP every rank must take the same number of steps, whatever its share's mix of groups.
    for epoch in range(20):
        shares, steps = [], set()
        for rank in range(2):
            base = DistributedSampler(range(100), num_replicas=2, rank=rank, shuffle=True, seed=3)
            sampler = GroupedBatchSampler(base, groups, 3)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(sampler) == len(batches)
            _check_batches(batches, groups, 3)
            shares.append([i for b in batches for i in b])
            steps.add(len(batches))
        assert sorted(shares[0] + shares[1]) == list(range(100))
        assert steps == {17}  # 50 indices per rank in batches of 3

    with pytest.raises(ValueError, match="batch_size"):
        GroupedBatchSampler(RandomSampler(range(3)), [0, 0, 0], 0)


def test_training_loader_groups_coco128_by_aspect_ratio(eval_set, instances):
    ratios = eval_set.aspect_ratios()
    by_id = {im["id"]: im["width"] / im["height"] for im in instances["images"]}
    assert ratios == [by_id[i] for i in eval_set.ids]
    groups = aspect_ratio_groups(ratios)
    assert 0 < sum(groups) < len(groups)  # coco128 has portrait and landscape images
    loader = make_loader(eval_set, batch_size=4, train=True, workers=0, seed=1)
    set_epoch(loader, 0)
    first = list(loader.batch_sampler)
    _check_batches(first, groups, 4)
    assert sorted(i for b in first for i in b) == list(range(len(eval_set)))
    assert len(loader) == len(first)
    set_epoch(loader, 1)
    assert list(loader.batch_sampler) != first  # reshuffled per epoch
    set_epoch(loader, 0)
    assert list(loader.batch_sampler) == first  # and reproducibly


def test_repeat_factors_follow_the_rarest_class_of_each_image(eval_set, instances):
    images_of = defaultdict(set)
    for a in instances["annotations"]:
        if not a["iscrowd"]:
            images_of[a["category_id"]].add(a["image_id"])
    count = len(instances["images"])
    classes_of = defaultdict(set)
    for a in instances["annotations"]:
        classes_of[a["image_id"]].add(a["category_id"])
    factors = dict(zip(eval_set.ids, repeat_factors(eval_set, 0.1), strict=True))
    for image_id, factor in factors.items():
        rarest = min((len(images_of[c]) for c in classes_of[image_id] if images_of[c]), default=None)
        want = 1.0 if rarest is None else max(1.0, (0.1 * count / rarest) ** 0.5)
        assert factor == pytest.approx(want)
    assert all(factors[i] == 1.0 for i in EMPTY_IDS)
    # A class in one image of 128 is seen sqrt(12.8) times an epoch; person, in most images, only once.
    person = next(c["id"] for c in instances["categories"] if c["name"] == "person")
    assert len(images_of[person]) > 0.1 * count
    assert max(factors.values()) == pytest.approx(12.8**0.5)


def test_repeat_factor_sampler_repeats_shuffles_and_shares_between_ranks():
    factors = [1.0, 2.6, 1.4, 3.0, 1.0]  # counts 1, 3, 1, 3, 1: 9 draws an epoch
    whole = RepeatFactorSampler(factors, seed=4)
    first = list(whole)
    assert sorted(first) == [0, 1, 1, 1, 2, 3, 3, 3, 4] and len(whole) == 9
    whole.set_epoch(1)
    second = list(whole)
    assert sorted(second) == sorted(first) and second != first
    whole.set_epoch(0)
    assert list(whole) == first
    ranks = [RepeatFactorSampler(factors, num_replicas=2, rank=r, seed=4) for r in range(2)]
    shares = [list(r) for r in ranks]
    assert [len(s) for s in shares] == [5, 5] == [len(r) for r in ranks]  # 9 padded to 10
    assert sorted(shares[0] + shares[1]) == sorted(first + first[:1])


def test_training_loader_repeats_images_of_rare_classes(eval_set):
    loader = make_loader(eval_set, batch_size=4, train=True, workers=0, seed=1, repeat_threshold=0.1)
    set_epoch(loader, 0)
    drawn = [i for batch in loader.batch_sampler for i in batch]
    want = [max(1, round(f)) for f in repeat_factors(eval_set, 0.1)]
    assert [drawn.count(i) for i in range(len(eval_set))] == want
    assert len(drawn) > len(eval_set) and len(loader) == -(-len(drawn) // 4)


def test_errors_name_the_path(tmp_path, coco128):
    images = coco128 / "images"
    missing = tmp_path / "nowhere.json"
    with pytest.raises(DatasetError, match="not found") as error:
        CocoDetectionDataset(images, missing, train=False)
    assert str(missing) in str(error.value)

    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(DatasetError, match="JSON") as error:
        CocoDetectionDataset(images, broken, train=False)
    assert str(broken) in str(error.value)

    not_coco = tmp_path / "list.json"
    not_coco.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="COCO") as error:
        CocoDetectionDataset(images, not_coco, train=False)
    assert str(not_coco) in str(error.value)

    no_bbox = tmp_path / "no_bbox.json"
    no_bbox.write_text(json.dumps({"images": [], "categories": [{"id": 1, "name": "a"}], "annotations": [{}]}))
    with pytest.raises(DatasetError, match="bbox") as error:
        CocoDetectionDataset(images, no_bbox, train=False)
    assert str(no_bbox) in str(error.value)

    no_dir = tmp_path / "no_images"
    with pytest.raises(DatasetError) as error:
        CocoDetectionDataset(no_dir, coco128 / "instances.json", train=False)
    assert str(no_dir) in str(error.value)
    assert issubclass(DatasetError, ValueError)


def test_missing_images_are_listed_and_reported(tmp_path, coco128, instances):
    empty = tmp_path / "images"
    empty.mkdir()
    dataset = CocoDetectionDataset(empty, coco128 / "instances.json", train=False)
    names = [im["file_name"] for im in sorted(instances["images"], key=lambda im: im["id"])]
    assert missing_images(dataset, limit=3) == names[:3]
    with pytest.raises(DatasetError, match="not found") as error:
        dataset[0]
    assert str(empty / names[0]) in str(error.value)
    assert missing_images(CocoDetectionDataset(coco128 / "images", coco128 / "instances.json", train=False)) == []


def test_embedded_sample_matches_coco128(instances, expected):
    sample = REPO / "data" / "sample"
    assert sum(f.stat().st_size for f in sample.rglob("*") if f.is_file()) < 2_000_000
    dataset = CocoDetectionDataset(sample / "images", sample / "instances.json", train=False)
    assert missing_images(dataset) == [] and len(dataset) <= 8
    assert [c["id"] for c in dataset.coco.dataset["categories"]] == [c["id"] for c in instances["categories"]]
    annotations = dataset.coco.dataset["annotations"]
    assert any(a["iscrowd"] for a in annotations)
    assert GRAYSCALE_ID in dataset.ids and any(not dataset.coco.imgToAnns.get(i) for i in dataset.ids)
    for index, image_id in enumerate(dataset.ids):
        _, target = dataset[index]
        want = expected[image_id]
        assert target["labels"].tolist() == [label for label, _ in want]
        torch.testing.assert_close(target["boxes"], torch.tensor([b for _, b in want]).reshape(-1, 4))
