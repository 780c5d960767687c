"""Rebuild data/sample from coco128: copy the chosen images, filter the official annotations.

    python data/sample/make_sample.py [--coco128 ../shared/data/coco128]

Keeps all 80 categories (so ids stay the official ones), the chosen images and only their annotations,
without the "segmentation" field. See README.md for why each image is here.
"""

import argparse
import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGES = (
    "000000000149.jpg",  # crowd: a row of people marked iscrowd=1, plus 22 small people, kites, cars
    "000000000643.jpg",  # crowd: a pile of books marked iscrowd=1, plus a TV, teddy bears, bottles
    "000000000250.jpg",  # no annotations at all: a negative
    "000000000086.jpg",  # grayscale JPEG (one channel): person on a motorcycle
    "000000000042.jpg",  # one large dog
    "000000000081.jpg",  # one large airplane
    "000000000471.jpg",  # a large bus and a person
    "000000000650.jpg",  # a cat and a car, both large
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--coco128",
        type=Path,
        default=HERE.parents[2] / "shared" / "data" / "coco128",
        help="coco128's folder (default ../shared/data/coco128 beside the repo)",
    )
    args = parser.parse_args()
    source = json.loads((args.coco128 / "instances.json").read_text())
    images = [im for im in source["images"] if im["file_name"] in IMAGES]
    if len(images) != len(IMAGES):
        raise SystemExit(f"{args.coco128}: found {len(images)} of the {len(IMAGES)} sample images")
    images.sort(key=lambda im: im["id"])
    ids = {im["id"] for im in images}
    annotations = [
        {k: v for k, v in a.items() if k != "segmentation"} for a in source["annotations"] if a["image_id"] in ids
    ]
    annotations.sort(key=lambda a: (a["image_id"], a["id"]))
    sample = {
        "info": {**source.get("info", {}), "description": "data/sample: 8 images of COCO train2017 (via coco128)"},
        "licenses": source.get("licenses", []),
        "categories": source["categories"],
        "images": images,
        "annotations": annotations,
    }
    (HERE / "images").mkdir(exist_ok=True)
    for name in IMAGES:
        shutil.copyfile(args.coco128 / "images" / name, HERE / "images" / name)
    (HERE / "instances.json").write_text(json.dumps(sample, indent=1) + "\n")
    print(f"{len(images)} images, {len(annotations)} annotations -> {HERE}")


if __name__ == "__main__":
    main()
