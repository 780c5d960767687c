"""Reading an OpenVINO IR (v10/v11 ``.xml`` + ``.bin``) without OpenVINO: its graph and constants as NumPy.

Used to take a pretrained ShuffleNet v2 body out of an IR whose BatchNorms were folded into the convolutions
(NanoDet-m's, see ``nanodet_backbone_state_dict``). The reader is small on purpose: it reads layers, edges and
constants; it does not execute anything (OpenVINO's runtime does that, and the tests compare against it).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .weights import WeightsError

_DTYPES = {"f32": np.float32, "f16": np.float16, "i64": np.int64, "i32": np.int32, "u8": np.uint8, "i8": np.int8}


@dataclass
class IRLayer:
    id: int
    name: str
    type: str
    data: dict[str, str]
    inputs: list[tuple[int, int]] = field(default_factory=list)  # (producer layer id, its port), by input port


@dataclass
class IRGraph:
    layers: dict[int, IRLayer]
    weights: bytes
    path: Path

    def const(self, layer_id: int) -> np.ndarray:
        """The value of Const layer ``layer_id`` (through a Convert, as FP16 IRs store their weights)."""
        layer = self.layers[layer_id]
        if layer.type == "Convert":
            return self.const(layer.inputs[0][0]).astype(_DTYPES.get(layer.data.get("destination_type", "f32")))
        if layer.type != "Const":
            raise WeightsError(f"{self.path}: layer {layer.name!r} is a {layer.type}, not a constant")
        dtype = _DTYPES.get(layer.data["element_type"])
        if dtype is None:
            raise WeightsError(
                f"{self.path}: constant {layer.name!r} has unsupported type {layer.data['element_type']}"
            )
        offset, size = int(layer.data["offset"]), int(layer.data["size"])
        if offset + size > len(self.weights):
            raise WeightsError(f"{self.path}: constant {layer.name!r} lies past the end of the .bin (truncated?)")
        shape = [int(d) for d in layer.data["shape"].split(",") if d] if layer.data.get("shape") else []
        array = np.frombuffer(self.weights, dtype=dtype, count=size // np.dtype(dtype).itemsize, offset=offset)
        return array.reshape(shape).copy()

    def consumers(self, layer_id: int) -> list[IRLayer]:
        return [layer for layer in self.layers.values() if any(src == layer_id for src, _ in layer.inputs)]

    def convolutions(self) -> list[IRLayer]:
        """Convolution and GroupConvolution layers in the order of the network they were converted from.

        Converters from ONNX keep the ONNX node names ("Conv_57"), numbered in the order the source model ran
        them, so a backbone's convolutions all come before its neck's; the IR's own layer ids interleave the two
        (a neck's lateral conv follows the stage it reads). Layers without such a number keep the id order.
        """
        convs = [layer for _, layer in sorted(self.layers.items()) if layer.type in ("Convolution", "GroupConvolution")]
        numbers = [re.match(r"[A-Za-z]+_(\d+)", layer.name) for layer in convs]
        if all(numbers):
            order = sorted(range(len(convs)), key=lambda i: int(numbers[i].group(1)))
            return [convs[i] for i in order]
        return convs


def read_ir(xml_path: str | Path) -> IRGraph:
    """Parse ``xml_path`` and its ``.bin`` beside it; a missing or malformed pair raises ``WeightsError``."""
    xml_path = Path(xml_path)
    bin_path = xml_path.with_suffix(".bin")
    for path in (xml_path, bin_path):
        if not path.is_file():
            raise WeightsError(f"{path}: no such file (an OpenVINO IR is an .xml with its .bin beside it)")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise WeightsError(f"{xml_path}: not a readable OpenVINO IR ({exc})") from None
    if root.tag != "net" or root.find("layers") is None or root.find("edges") is None:
        raise WeightsError(f"{xml_path}: not an OpenVINO IR (no <net> with <layers> and <edges>)")
    layers: dict[int, IRLayer] = {}
    port_owner: dict[tuple[int, int], int] = {}  # (layer, input port) -> index among that layer's inputs
    try:
        for element in root.find("layers"):
            data = element.find("data")
            layer = IRLayer(
                int(element.get("id")),
                element.get("name", ""),
                element.get("type", ""),
                dict(data.attrib) if data is not None else {},
            )
            layers[layer.id] = layer
            in_ports = element.find("input")
            for index, port in enumerate(in_ports if in_ports is not None else []):
                port_owner[(layer.id, int(port.get("id")))] = index
        wiring: dict[int, dict[int, tuple[int, int]]] = {}
        for edge in root.find("edges"):
            to_layer, to_port = int(edge.get("to-layer")), int(edge.get("to-port"))
            index = port_owner[(to_layer, to_port)]
            wiring.setdefault(to_layer, {})[index] = (int(edge.get("from-layer")), int(edge.get("from-port")))
    except (TypeError, ValueError, KeyError) as exc:
        raise WeightsError(f"{xml_path}: malformed OpenVINO IR ({type(exc).__name__}: {exc})") from None
    for layer_id, inputs in wiring.items():
        layers[layer_id].inputs = [inputs[i] for i in sorted(inputs)]
    return IRGraph(layers, bin_path.read_bytes(), xml_path)


def _conv_bias(graph: IRGraph, conv: IRLayer) -> np.ndarray:
    """The per-channel bias a folded BatchNorm left as an Add right after ``conv``."""
    for consumer in graph.consumers(conv.id):
        if consumer.type == "Add":
            other = next(src for src, _ in consumer.inputs if src != conv.id)
            return graph.const(other).reshape(-1)
    raise WeightsError(f"{graph.path}: convolution {conv.name!r} has no bias (was its BatchNorm folded?)")


def folded_conv_params(graph: IRGraph, conv: IRLayer) -> tuple[np.ndarray, np.ndarray]:
    """(weight in PyTorch's (out, in/groups, kh, kw) layout, bias) of a convolution with a folded BatchNorm."""
    weight = graph.const(conv.inputs[1][0])
    if conv.type == "GroupConvolution":  # IR: (groups, out/groups, in/groups, kh, kw)
        groups, per_out = weight.shape[:2]
        weight = weight.reshape(groups * per_out, *weight.shape[2:])
    return weight, _conv_bias(graph, conv)


def shufflenet_state_dict_from_ir(xml_path: str | Path, model, *, bgr_input: bool = True) -> dict:
    """A state dict for ``model`` (a ShuffleNet body) from the first convolutions of an IR with folded BatchNorms.

    The model's convolutions are matched, in module order, to the IR's first convolutions (NanoDet-m's body
    follows torchvision's shufflenet_v2 order: conv1, then per stage the first block's branch1 and every
    block's branch2). Each folded (weight, bias) becomes the conv's weight and the next BatchNorm as the identity
    plus that bias: weight 1, bias b, mean 0, var 1 - eps, so (x - 0) / sqrt(1 - eps + eps) * 1 + b = x + b
    exactly. ``bgr_input``: the IR was trained on BGR pixels; the first conv's input channels are reversed so
    the model takes RGB like every other model here. Any shape that does not match raises ``WeightsError``.
    """
    import torch
    from torch import nn

    graph = read_ir(xml_path)
    modules = list(model.named_modules())
    pairs = []  # (conv name, conv, following norm name, norm)
    for i, (name, module) in enumerate(modules):
        if isinstance(module, nn.Conv2d):
            norm_name, norm = next(((n, m) for n, m in modules[i + 1 :] if hasattr(m, "running_var")), (None, None))
            if norm is None:
                raise WeightsError(f"{type(model).__name__}: convolution {name} has no BatchNorm after it")
            pairs.append((name, module, norm_name, norm))
    convs = graph.convolutions()
    if len(convs) < len(pairs):
        raise WeightsError(f"{xml_path}: has {len(convs)} convolutions, the backbone needs {len(pairs)}")
    state = {}
    for index, ((name, conv, norm_name, norm), ir_conv) in enumerate(zip(pairs, convs, strict=False)):
        weight, bias = folded_conv_params(graph, ir_conv)
        if tuple(weight.shape) != tuple(conv.weight.shape) or bias.shape != (conv.out_channels,):
            raise WeightsError(
                f"{xml_path}: convolution {index} ({ir_conv.name}) is {tuple(weight.shape)}, but {name} of "
                f"{type(model).__name__} is {tuple(conv.weight.shape)}: not this backbone's weights"
            )
        if index == 0 and bgr_input:
            weight = weight[:, ::-1]
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        eps = float(getattr(norm, "eps", 1e-5))
        state[f"{norm_name}.weight"] = torch.ones(conv.out_channels)
        state[f"{norm_name}.bias"] = torch.from_numpy(bias.astype(np.float32))
        state[f"{norm_name}.running_mean"] = torch.zeros(conv.out_channels)
        state[f"{norm_name}.running_var"] = torch.full((conv.out_channels,), 1.0 - eps)
        if "num_batches_tracked" in dict(norm.named_buffers()):
            state[f"{norm_name}.num_batches_tracked"] = torch.tensor(0)
    return state


def stage_output_names(xml_path: str | Path, num_backbone_convs: int, num_stages: int = 3) -> list[str]:
    """Names of the IR layers whose outputs are the body's stage outputs: the inputs of the layers that read
    the body (the neck's first convolutions), one per stage, shallow to deep. For checking against OpenVINO."""
    graph = read_ir(xml_path)
    neck = graph.convolutions()[num_backbone_convs : num_backbone_convs + num_stages]
    return [graph.layers[conv.inputs[0][0]].name for conv in neck]
