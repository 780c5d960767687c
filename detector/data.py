"""COCO-format detection data: the dataset, aspect-ratio batching and the loader.

Images come back at their original size as float (3, H, W) in 0..1; the model's own transform resizes
(multi-scale in training) and normalises, so nothing here resizes. Targets hold boxes as [x1, y1, x2, y2]
in pixels and labels 1..K from the one ``CategoryMap``.
"""

import contextlib
import io
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler, SequentialSampler
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection
from torchvision.datasets.vision import VisionDataset
from torchvision.transforms import v2

from . import distributed as dist
from .categories import CategoryMap

MIN_BOX_SIDE = 1.0  # boxes no wider or taller than this (in pixels, after clamping) are dropped
# The label of a region to ignore in training (an annotation with "ignore": true, such as a teacher's unsure
# detection): torchvision's RoI sampler takes a proposal matched to it as neither an object nor background.
IGNORE_LABEL = -1
# How far SSD's zoom-out may shrink a photo: onto a canvas up to this many times its sides. SSD goes to 4 at
# 300 px; at a 320 px training scale that leaves most COCO objects a few pixels wide, so this stops at 2.
ZOOM_OUT_MAX = 2.0


class DatasetError(ValueError):
    """A dataset a user pointed at cannot be used: the message names the path and the problem."""


def load_coco(annotation_file: str | Path) -> COCO:
    """A pycocotools ``COCO`` index of a COCO-format JSON file, checked enough to fail with a clear message."""
    path = Path(annotation_file)
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"annotation file {path} is not readable JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"annotation file {path} is not COCO format: no 'images' list")
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise DatasetError(f"annotation file {path} is not COCO format: no 'categories' list")
    data.setdefault("annotations", [])  # image-info files (test sets) have none
    for image in data["images"]:
        if not (isinstance(image, dict) and {"id", "file_name", "width", "height"} <= image.keys()):
            raise DatasetError(f"annotation file {path}: an image lacks id/file_name/width/height: {image!r:.200}")
        if not all(isinstance(image[k], int | float) and image[k] > 0 for k in ("width", "height")):
            raise DatasetError(
                f"annotation file {path}: image {image['id']} has size {image['width']!r}x{image['height']!r}"
            )
    if not isinstance(data["annotations"], list):
        raise DatasetError(f"annotation file {path} is not COCO format: 'annotations' is not a list")
    for ann in data["annotations"]:
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        if not (isinstance(bbox, list) and len(bbox) == 4 and {"image_id", "category_id"} <= ann.keys()):
            raise DatasetError(f"annotation file {path}: an annotation lacks image_id/category_id/bbox: {ann!r:.200}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


class CocoDetectionDataset(CocoDetection):
    """A COCO-format detection dataset yielding ``(image, target)`` for torchvision's Faster R-CNN.

    ``image``: float32 (3, H, W) in 0..1, RGB (grayscale and RGBA files are converted), original size.
    ``target``: {"boxes": float32 (N, 4) [x1, y1, x2, y2] pixels, "labels": int64 (N,) 1..K,
    "image_id": int, "orig_size": (H, W)}. Crowd regions and boxes with a side <= 1 px after clamping to
    the image are left out; images without boxes stay in as negatives (boxes of shape (0, 4)).
    ``train=True`` adds a random horizontal flip (probability ``hflip``, from torch's RNG) and, with probability
    ``crop``, SSD's random crop (``v2.RandomIoUCrop``: at least 0.3 of each side, overlapping some box by a drawn
    IoU; boxes whose centres leave it are dropped), which shows the same objects at other scales and contexts.
    ``zoom_out``, applied before the crop, is the probability of SSD's zoom-out (``v2.RandomZoomOut``): the photo
    placed at random on a canvas up to ``ZOOM_OUT_MAX`` times its sides, filled with ``fill`` (RGB in 0..1: the
    model's normalisation mean, which normalises to zero), so objects are seen smaller than the photo has them.
    ``categories`` defaults to the file's own categories; given (e.g. from a checkpoint), every annotated
    category id must be one of them.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotation_file: str | Path,
        *,
        train: bool,
        categories: CategoryMap | None = None,
        hflip: float = 0.5,
        crop: float = 0.0,
        zoom_out: float = 0.0,
        fill: tuple[float, float, float] = (0.5, 0.5, 0.5),
    ) -> None:
        images_dir = Path(images_dir)
        if not images_dir.is_dir():
            raise DatasetError(f"images directory not found: {images_dir}")
        # CocoDetection's own constructor would read the file through COCO(), which prints and fails with
        # bare KeyErrors; load it once here and set what that constructor sets.
        coco = load_coco(annotation_file)
        steps = [v2.ToImage()]
        if train and zoom_out > 0:  # on uint8 pixels, so the fill is in 0..255
            canvas = [round(255 * c) for c in fill]
            steps.append(v2.RandomZoomOut(fill=canvas, side_range=(1.0, ZOOM_OUT_MAX), p=zoom_out))
        if train and crop > 0:
            steps += [v2.RandomApply([v2.RandomIoUCrop()], p=crop), v2.SanitizeBoundingBoxes(min_size=MIN_BOX_SIDE)]
        if train and hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        VisionDataset.__init__(self, images_dir, transforms=v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True)]))
        self.coco = coco
        self.ids: list[int] = sorted(coco.imgs)
        self.annotation_file = Path(annotation_file)
        self.train = train
        try:
            self.categories = (
                categories if categories is not None else CategoryMap.from_coco(coco.dataset["categories"])
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"annotation file {annotation_file}: bad 'categories': {e}") from None
        clashes = [
            f"id {c.id} is {c.name!r} to the model but {coco.cats[c.id].get('name')!r} there"
            for c in self.categories.categories
            if c.id in coco.cats and coco.cats[c.id].get("name") != c.name
        ]
        if clashes:
            raise DatasetError(
                f"annotation file {annotation_file} names the model's categories differently "
                f"({'; '.join(clashes[:3])}): they are not the same classes; the model's are {self.categories}"
            )
        known = {c.id for c in self.categories.categories}
        unknown = sorted({a["category_id"] for a in coco.anns.values()} - known)
        if unknown:
            raise DatasetError(
                f"annotation file {annotation_file} uses category ids {unknown} outside {self.categories}"
            )

    def image_path(self, index: int) -> Path:
        return Path(self.root) / self.coco.imgs[self.ids[index]]["file_name"]

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, in index order, from the annotation file (no decoding)."""
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.ids]

    def _load_image(self, id: int) -> Image.Image:
        path = Path(self.root) / self.coco.imgs[id]["file_name"]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise DatasetError(f"image file not found: {path}") from None
        except (OSError, UnidentifiedImageError) as e:
            raise DatasetError(f"image file {path} cannot be decoded: {e}") from None

    def _load_target(self, id: int) -> dict:
        info = self.coco.imgs[id]
        height, width = int(info["height"]), int(info["width"])
        anns = [
            a
            for a in self.coco.imgToAnns.get(id, [])
            if not a.get("iscrowd", 0) and (self.train or not a.get("ignore", False))
        ]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = ((boxes[:, 2] - boxes[:, 0]) > MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) > MIN_BOX_SIDE)
        labels = torch.tensor(
            [IGNORE_LABEL if a.get("ignore", False) else self.categories.label(a["category_id"]) for a in anns],
            dtype=torch.int64,
        )
        return {
            "boxes": tv_tensors.BoundingBoxes(boxes[keep], format="XYXY", canvas_size=(height, width)),
            "labels": labels[keep],
            "image_id": int(id),
            "orig_size": (height, width),
        }

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        id = self.ids[index]
        image = self._load_image(id)
        target = self._load_target(id)
        if image.size != (target["orig_size"][1], target["orig_size"][0]):
            raise DatasetError(
                f"image {self.image_path(index)} is {image.size[0]}x{image.size[1]} but the annotation file "
                f"says {target['orig_size'][1]}x{target['orig_size'][0]}"
            )
        image, target = self.transforms(image, target)
        # Plain tensors out: tv_tensors' subclasses are for the transforms, not for the model.
        target["boxes"] = target["boxes"].as_subclass(Tensor)
        return image.as_subclass(Tensor), target


def missing_images(dataset: CocoDetectionDataset, limit: int = 5) -> list[str]:
    """The first ``limit`` annotation file_names with no file under the images directory."""
    missing = []
    for index in range(len(dataset)):
        if not dataset.image_path(index).is_file():
            missing.append(dataset.coco.imgs[dataset.ids[index]]["file_name"])
            if len(missing) >= limit:
                break
    return missing


def aspect_ratio_groups(aspect_ratios: Sequence[float]) -> list[int]:
    """Group 0 for landscape or square images (w / h >= 1), group 1 for portrait."""
    return [0 if r >= 1 else 1 for r in aspect_ratios]


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of indices from ``sampler`` in which every index has the same group id.

    Indices are taken in the base sampler's order and a batch is emitted when its group has
    ``batch_size`` of them. At the end of an epoch the groups' remainders, taken group after group, fill
    the last batches, so one of them may mix groups and only the very last may be short: every index the
    base sampler yields appears exactly once, in ``ceil(len(sampler) / batch_size)`` batches. That count
    depends only on the sampler's length, so over a ``DistributedSampler`` (equal shares) every rank takes
    the same number of steps, which DDP needs: ranks with different counts would pair one rank's last
    training step with another's evaluation and hang. Call ``set_epoch`` here; it is passed on.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        pending: dict[int, list[int]] = {}
        for index in self.sampler:
            batch = pending.setdefault(self.group_ids[index], [])
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                pending[self.group_ids[index]] = []
        rest = [index for group in sorted(pending) for index in pending[group]]
        for start in range(0, len(rest), self.batch_size):
            yield rest[start : start + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def repeat_factors(dataset: CocoDetectionDataset, threshold: float) -> list[float]:
    """How often each image is worth seeing in an epoch, for a set whose classes are long-tailed.

    Repeat factor sampling (Gupta, Dollar and Girshick, LVIS, 2019): a class in a fraction ``f`` of the images
    has ``max(1, sqrt(threshold / f))``, an image the largest of its classes' (1 with no boxes). Images with
    classes rarer than ``threshold`` come back more often; the common classes are left as they are.
    """
    image_ids_of: dict[int, set[int]] = {}
    for ann in dataset.coco.anns.values():
        if not ann.get("iscrowd", 0) and not ann.get("ignore", False):
            image_ids_of.setdefault(ann["category_id"], set()).add(ann["image_id"])
    count = len(dataset.ids)
    class_factor = {c: max(1.0, math.sqrt(threshold * count / len(ids))) for c, ids in image_ids_of.items()}
    return [
        max((class_factor.get(a["category_id"], 1.0) for a in dataset.coco.imgToAnns.get(i, [])), default=1.0)
        for i in dataset.ids
    ]


class RepeatFactorSampler(Sampler[int]):
    """A seeded per-epoch shuffle in which index ``i`` appears ``round(factors[i])`` times (at least once).

    The counts are fixed, so every epoch has the same length (the schedule counts steps per epoch). Like
    ``DistributedSampler``, every rank shuffles alike and takes every ``num_replicas``-th index of one
    permutation, padded with its first indices to equal shares; call ``set_epoch`` before each epoch.
    """

    def __init__(self, factors: Sequence[float], *, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.indices = [i for i, factor in enumerate(factors) for _ in range(max(1, round(factor)))]
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = math.ceil(len(self.indices) / num_replicas)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(len(self.indices), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        order = order.tolist()
        order += order[: self.num_samples * self.num_replicas - len(order)]
        return iter([self.indices[k] for k in order[self.rank :: self.num_replicas]])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def collate(batch: Sequence[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """Images differ in size, so a batch stays two lists: (images, targets)."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)


def make_loader(
    dataset: CocoDetectionDataset,
    *,
    batch_size: int,
    train: bool,
    workers: int,
    distributed: bool = False,
    seed: int = 0,
    rank: int = 0,
    repeat_threshold: float | None = None,
) -> DataLoader:
    """A DataLoader of (list of images, list of targets).

    Training: shuffled by ``seed`` and the epoch (a ``DistributedSampler``, over one replica unless
    ``distributed``) and batched by aspect-ratio group; call ``set_epoch(loader, epoch)`` before each epoch.
    The shuffle is the same on every rank (each takes its share of one permutation); the workers' random
    flips are seeded by ``seed + rank``, so that ranks do not flip alike. ``repeat_threshold`` shows images of
    rare classes more often in an epoch (``repeat_factors``).
    Evaluation: in index order (``distributed``: each rank takes every world_size-th image, and
    ``DistributedSampler`` repeats a few images so the ranks get equal shares).
    """
    if train:
        # Not distributed: a one-replica DistributedSampler is simply a seeded, per-epoch shuffle.
        replicas = (
            {"num_replicas": dist.world(), "rank": dist.rank()} if distributed else {"num_replicas": 1, "rank": 0}
        )
        if repeat_threshold is None:
            sampler = DistributedSampler(dataset, shuffle=True, seed=seed, **replicas)
        else:
            sampler = RepeatFactorSampler(repeat_factors(dataset, repeat_threshold), seed=seed, **replicas)
        batch_sampler = GroupedBatchSampler(sampler, aspect_ratio_groups(dataset.aspect_ratios()), batch_size)
    else:
        sampler = DistributedSampler(dataset, shuffle=False) if distributed else SequentialSampler(dataset)
        batch_sampler = BatchSampler(sampler, batch_size, drop_last=False)
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(seed + rank),  # seeds the workers' RNGs (the random flips)
        persistent_workers=workers > 0,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reseed a ``make_loader`` loader's shuffling for ``epoch`` (a no-op for unshuffled loaders)."""
    for sampler in (loader.batch_sampler, getattr(loader.batch_sampler, "sampler", None)):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
            return
