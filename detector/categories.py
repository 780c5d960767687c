"""The one place where COCO category ids meet the model's contiguous labels.

torchvision's detection heads reserve label 0 for background, so a dataset's K categories become labels
1..K in the order of their ids. COCO's ids run 1..90 with gaps; nothing else in the project maps them.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    id: int  # the dataset's category id (COCO: 1..90 with gaps)
    name: str


class CategoryMap:
    """Categories in label order: label ``i`` (1-based) is ``categories[i - 1]``."""

    def __init__(self, categories: Iterable[Category]) -> None:
        self.categories: tuple[Category, ...] = tuple(sorted(categories, key=lambda c: c.id))
        if not self.categories:
            raise ValueError("a detector needs at least one category")
        ids = [c.id for c in self.categories]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate category ids: {ids}")
        self._label_of_id = {c.id: i + 1 for i, c in enumerate(self.categories)}

    @classmethod
    def from_coco(cls, categories: Iterable[Mapping]) -> "CategoryMap":
        """From COCO JSON's "categories" list (dicts with "id" and "name")."""
        return cls(Category(int(c["id"]), str(c["name"])) for c in categories)

    def to_coco(self) -> list[dict]:
        return [{"id": c.id, "name": c.name} for c in self.categories]

    @property
    def num_classes(self) -> int:
        """Including background, as torchvision's FasterRCNN counts them."""
        return len(self.categories) + 1

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    def label(self, category_id: int) -> int:
        try:
            return self._label_of_id[category_id]
        except KeyError:
            raise KeyError(f"category id {category_id} is not one of {list(self._label_of_id)}") from None

    def category_id(self, label: int) -> int:
        return self.categories[self._index(label)].id

    def name(self, label: int) -> str:
        return self.categories[self._index(label)].name

    def _index(self, label: int) -> int:
        if not 1 <= label <= len(self.categories):
            raise KeyError(f"label {label} is outside 1..{len(self.categories)}")
        return label - 1

    def __len__(self) -> int:
        return len(self.categories)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CategoryMap) and self.categories == other.categories

    def __repr__(self) -> str:
        shown = ", ".join(f"{c.id} {c.name}" for c in self.categories[:12])
        return f"{len(self)} categories ({shown}{', ...' if len(self) > 12 else ''})"
