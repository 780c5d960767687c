"""Named backbone configurations (plain data) and the one builder that turns a name into a network."""

from dataclasses import dataclass
from pathlib import Path

from .features import FeatureBackbone
from .layers import freeze_batchnorm, set_activation
from .openvino_ir import shufflenet_state_dict_from_ir
from .shufflenet_v1 import STAGE_OUT_CHANNELS as V1_GROUPS
from .shufflenet_v1 import STEM_CHANNELS as V1_SCALES
from .shufflenet_v1 import ShuffleNetV1
from .shufflenet_v2 import STAGE_OUT_CHANNELS as V2_SCALES
from .shufflenet_v2 import ShuffleNetV2
from .weights import load_state, load_weights


@dataclass(frozen=True)
class BackboneSpec:
    arch: str  # "shufflenet_v1" or "shufflenet_v2"
    scale: float
    groups: int | None = None  # v1 only


def _scale_tag(scale: float) -> str:
    return f"{scale:g}x"


BACKBONES: dict[str, BackboneSpec] = {
    **{
        f"shufflenet_v1_g{g}_{_scale_tag(s)}": BackboneSpec("shufflenet_v1", s, g) for g in V1_GROUPS for s in V1_SCALES
    },
    # torchvision's names, so weights files keep their familiar names too.
    **{f"shufflenet_v2_x{s:.1f}".replace(".", "_"): BackboneSpec("shufflenet_v2", s) for s in V2_SCALES},
}


def create_backbone(
    name: str,
    *,
    num_classes: int = 1000,
    features_only: bool = False,
    shuffle: bool = True,
    weights: str | Path | None = None,
    activation: str = "relu",
    frozen_batchnorm: bool = False,
) -> FeatureBackbone:
    """Build backbone ``name`` (a key of BACKBONES).

    ``weights``: a local ImageNet state dict, loaded strictly (with ``features_only``, the file's classifier
    keys are left out), or an OpenVINO IR ``.xml`` whose first convolutions are this body with BatchNorm
    folded in (NanoDet-m's; see ``openvino_ir``). ``features_only``: drop the classification head, for use under
    a detector. ``shuffle=False`` turns channel shuffle off (v1 only: the paper's Table 3 ablation).
    ``activation``: "relu" (the papers') or "leaky_relu" (NanoDet's, slope 0.1). ``frozen_batchnorm``: fixed
    statistics and affine parameters (torchvision's FrozenBatchNorm2d), for detectors on pretrained weights.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    if spec.arch == "shufflenet_v1":
        model: FeatureBackbone = ShuffleNetV1(spec.groups, spec.scale, num_classes=num_classes, shuffle=shuffle)
    else:
        if not shuffle:
            raise ValueError("shuffle=False is a ShuffleNet v1 ablation; v2 has no switch for it")
        model = ShuffleNetV2(spec.scale, num_classes=num_classes)
    if features_only:
        # The classifier goes before loading, so an ImageNet file with any number of classes fits the body,
        # which is still checked strictly.
        full_keys = set(model.state_dict())
        model.remove_classifier()
        head_keys = full_keys - set(model.state_dict())
    else:
        head_keys = set()
    set_activation(model, activation)
    if weights is not None:
        if Path(weights).suffix == ".xml":
            load_state(model, shufflenet_state_dict_from_ir(weights, model), source=weights)
        else:
            load_weights(model, weights, ignore=head_keys)
    return freeze_batchnorm(model) if frozen_batchnorm else model
