"""The service's request options and responses as pydantic models: what /docs shows is what is returned."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Box = Annotated[list[float], Field(min_length=4, max_length=4, description="[x1, y1, x2, y2] in image pixels")]


class DetectOptions(BaseModel):
    """Options of POST /detect, as query parameters or as form fields of a multipart request."""

    model_config = ConfigDict(extra="forbid")

    score_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="keep detections scoring at least this (default: the service's; the model itself "
        "drops detections under its own box_score_thresh)",
    )
    max_detections: int = Field(100, ge=0, le=1000, description="at most this many detections per image")
    classes: list[str] | None = Field(
        None, description="keep only these class names; repeat the field or separate names with commas"
    )

    @field_validator("classes")
    @classmethod
    def _split_names(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [name.strip() for item in value for name in item.split(",")]
        if not all(names):
            raise ValueError("class names must not be empty")
        return names


class Detection(BaseModel):
    label: str = Field(description="class name")
    category_id: int = Field(description="the dataset's category id (COCO ids for COCO-trained models)")
    score: float = Field(ge=0, le=1)
    box: Box


class ImageResult(BaseModel):
    width: int = Field(description="the image's width in pixels, after EXIF orientation")
    height: int
    detections: list[Detection]


class ModelRef(BaseModel):
    name: str = Field(description="detector configuration name")
    backbone: str
    checkpoint: str = Field(description="model file name")
    engine: Literal["torch", "onnxruntime"] = Field(description="the inference engine running it")


class Timings(BaseModel):
    decode_ms: float = Field(description="reading and decoding the images")
    queue_ms: float = Field(description="longest wait of the request's images for a forward pass")
    inference_ms: float = Field(description="the forward passes that held the request's images")
    total_ms: float = Field(description="from the start of handling to the response")
    batch_sizes: list[int] = Field(description="size of the batch each image ran in")


class DetectResponse(BaseModel):
    results: list[ImageResult] = Field(description="one per image, in the order sent")
    model: ModelRef
    timings: Timings


class Category(BaseModel):
    id: int
    name: str


class Cost(BaseModel):
    macs: int = Field(description="multiply-adds for one image at input_size")
    gmacs: float
    params: int
    macs_by_part: dict[str, int]


class ModelInfo(BaseModel):
    name: str
    backbone: str
    classes: list[Category]
    input_size: list[int] = Field(description="[height, width] of a 4:3 landscape image after resizing")
    min_size: int = Field(description="short side the detector resizes to, unless the long side passes max_size")
    max_size: int = Field(description="long side limit")
    cost: Cost
    checkpoint: str = Field(description="model file name")
    engine: Literal["torch", "onnxruntime"]
    provenance: dict[str, Any]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"


class Error(BaseModel):
    """Every error response: ``detail`` says what was wrong; 422s also list the offending fields."""

    detail: str
    errors: list[dict[str, Any]] | None = None
