"""Sample models built deterministically with onnx.helper and numpy: no downloads, no torch.

- `build_classifier`: a MobileNet-v1-like CNN (depthwise-separable blocks, ReLU6, global average pool),
  dynamic batch, height and width, ~1.8 MB of float32 weights.
- `build_resnet`: a ResNet-18-like classifier (basic blocks, batch norm folded into conv biases), ~45 MB,
  whose head (`fc_w`, `fc_b`) is 4.4 % of the weights; `opset` and `input_size` give the re-exports of the
  same weights a model delta is measured on, `retrain_head` a head-only fine-tune.
- `build_detector`: a small anchor-per-cell detector (strided convs, two heads at strides 16 and 32,
  box decoding inside the graph) whose output can be laid out as any supported detection layout:
  `yolov8` [B, 4+C, N], `yolov5` [B, N, 5+C], `ssd` (boxes [B, N, 4] normalised xyxy + scores
  [B, N, 1+C] logits with background) or `nms` (ONNX NonMaxSuppression inside; batch 1). ~3.9 MB.

Weights are He-initialised from numpy's PCG64 with a fixed seed, so the bytes (and their sha256) are
identical on every run.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.descriptor import (
    BoxFormat,
    ClassificationOutput,
    InputSpec,
    Layout,
    ModelDescriptor,
    NmsOutput,
    OutputSpec,
    ResizeMode,
    SsdOutput,
    Task,
    YoloV5Output,
    YoloV8Output,
)

OPSET = 17
IR_VERSION = 8
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DETECTOR_LABELS = ("person", "bicycle", "car", "motorcycle", "bus", "truck", "dog", "cat")
OBJ_BIAS = -1.5
CLS_BIAS = -2.0
HEAD_GAIN = 4.0
DetectorLayout = Literal["yolov8", "yolov5", "ssd", "nms"]


class _Graph:
    """Accumulates nodes and initialisers with unique names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, value: npt.ArrayLike, prefix: str = "c", dtype: npt.DTypeLike = np.float32) -> str:
        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), n))
        return n

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        *,
        k: int = 3,
        stride: int = 1,
        group: int = 1,
        bias: npt.ArrayLike = 0.0,
        gain: float = 1.0,
    ) -> str:
        fan_in = cin // group * k * k
        std = np.float32(gain * np.sqrt(2.0 / fan_in))
        w = self.rng.standard_normal((cout, cin // group, k, k)).astype(np.float32) * std
        b = np.broadcast_to(np.asarray(bias, dtype=np.float32), (cout,))
        return self.op(
            "Conv",
            [x, self.const(w, "w"), self.const(b, "b")],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[k // 2] * 4,
            group=group,
        )

    def relu6(self, x: str) -> str:
        return self.op("Clip", [x, self.const(0.0), self.const(6.0)])

    def model(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], name: str, opset: int = OPSET
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgefleet")
        m.ir_version = IR_VERSION
        return m


def build_classifier(
    num_classes: int = 100, seed: int = 0, *, raw_nhwc: bool = False, width: float = 1.0
) -> onnx.ModelProto:
    """MobileNet-like classifier: input 'image' [batch, 3, height, width] -> 'logits' [batch, classes].

    With `raw_nhwc`, the same network (same weights) takes uint8 pixels [batch, height, width, 3] and does
    the ImageNet normalisation inside the graph, as many exported edge models do. `width` multiplies every
    layer's channels (MobileNet's width multiplier): about width² times the weights and the compute.
    """
    g = _Graph(seed)
    x = "image"
    if raw_nhwc:
        x = g.op("Transpose", [g.op("Cast", [x], to=TensorProto.FLOAT)], perm=[0, 3, 1, 2])
        mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
        std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
        x = g.op("Div", [g.op("Sub", [x, g.const(mean)]), g.const(std)])
    first = max(8, round(16 * width))
    x = g.relu6(g.conv(x, 3, first, stride=2))
    cin = first
    for channels, stride in [
        (32, 1),
        (64, 2),
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (256, 1),
        (512, 2),
    ]:
        cout = max(8, round(channels * width))
        x = g.relu6(g.conv(x, cin, cin, stride=stride, group=cin))
        x = g.relu6(g.conv(x, cin, cout, k=1))
        cin = cout
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    w = g.rng.standard_normal((cin, num_classes)).astype(np.float32) * np.sqrt(1.0 / cin)
    logits = g.op("Gemm", [x, g.const(w, "fc_w"), g.const(np.zeros(num_classes), "fc_b")])
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    vi = helper.make_tensor_value_info
    image = (
        vi("image", TensorProto.UINT8, ["batch", "height", "width", 3])
        if raw_nhwc
        else vi("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    )
    return g.model(
        [image],
        [vi("logits", TensorProto.FLOAT, ["batch", num_classes])],
        "mobilenet_like",
    )


def build_resnet(
    num_classes: int = 1000, seed: int = 0, *, opset: int = OPSET, input_size: int | None = None
) -> onnx.ModelProto:
    """ResNet-18-like classifier: 'image' [batch, 3, H, W] -> 'logits' [batch, classes], He-initialised.

    The same seed gives the same weights whatever the export options, as re-exporting a trained network
    would: `opset` 13 writes the flatten as a Reshape and pooling as ReduceMean with an axes attribute
    (opset 18+: axes as an input, Flatten), and `input_size` fixes the input's spatial size (dynamic if None).
    """
    g = _Graph(seed)
    x = g.op("Relu", [g.conv("image", 3, 64, k=7, stride=2)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]:
        y = g.op("Relu", [g.conv(x, cin, cout, stride=stride)])
        y = g.conv(y, cout, cout)
        skip = x if stride == 1 and cin == cout else g.conv(x, cin, cout, k=1, stride=stride)
        x = g.op("Relu", [g.op("Add", [y, skip])])
        cin = cout
    if opset >= 18:
        x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    else:
        pooled = g.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
        x = g.op("Reshape", [pooled, g.const(np.asarray([-1, cin]), "shape", np.int64)])
    w = g.rng.standard_normal((cin, num_classes)).astype(np.float32) * np.sqrt(1.0 / cin)
    logits = g.op("Gemm", [x, g.const(w, "fc_w"), g.const(np.zeros(num_classes), "fc_b")])
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    vi = helper.make_tensor_value_info
    side: list[int | str] = [input_size, input_size] if input_size else ["height", "width"]
    image = vi("image", TensorProto.FLOAT, ["batch", 3, *side])
    return g.model([image], [vi("logits", TensorProto.FLOAT, ["batch", num_classes])], "resnet_like", opset)


def retrain_head(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """A copy of a sample classifier whose head (`fc_*` initializers) has new values: a head-only fine-tune."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.Generator(np.random.PCG64(seed))
    for init in out.graph.initializer:
        if init.name.startswith("fc_"):
            old = numpy_helper.to_array(init)
            new = (old + rng.standard_normal(old.shape).astype(np.float32) * 0.01).astype(old.dtype)
            init.CopyFrom(numpy_helper.from_array(new, init.name))
    return out


def classifier_descriptor(
    num_classes: int = 100,
    height: int = 224,
    width: int = 224,
    name: str = "mobilenet-like",
    *,
    raw_nhwc: bool = False,
) -> ModelDescriptor:
    """Description of `build_classifier` (any height/width: the graph's spatial axes are dynamic)."""
    spec = (
        InputSpec(
            name="image",
            layout=Layout.NHWC,
            height=height,
            width=width,
            dynamic_size=True,
            dtype="uint8",
            scale=1.0,
        )
        if raw_nhwc
        else InputSpec(
            name="image", height=height, width=width, dynamic_size=True, mean=IMAGENET_MEAN, std=IMAGENET_STD
        )
    )
    return ModelDescriptor(
        name=name,
        version="1.0.0",
        task=Task.CLASSIFICATION,
        input=spec,
        output=ClassificationOutput(kind="classification", output="logits", scores="logits", top_k=5),
        labels=tuple(f"class_{i:03d}" for i in range(num_classes)),
    )


def build_detector(
    layout: DetectorLayout = "yolov8",
    size: tuple[int, int] = (320, 320),
    num_classes: int = len(DETECTOR_LABELS),
    seed: int = 1,
) -> onnx.ModelProto:
    """Small detector on input 'images' [batch, 3, H, W] (H, W multiples of 32) in the given layout."""
    h, w = size
    if h % 32 or w % 32:
        raise ValueError("detector height and width must be multiples of 32")
    g = _Graph(seed)
    x = "images"
    cin = 3
    feats = []
    for cout in (16, 32, 64, 128, 256):
        x = g.relu6(g.conv(x, cin, cout, stride=2))
        cin = cout
        if cout == 128:
            feats.append((x, 128, 16))
    x = g.relu6(g.conv(x, 256, 256))
    feats.append((x, 256, 32))
    n_out = 5 + num_classes
    levels = []
    for feat, ch, stride in feats:
        gh, gw = h // stride, w // stride
        head_bias = np.array([0.0] * 4 + [OBJ_BIAS] + [CLS_BIAS] * num_classes, dtype=np.float32)
        raw = g.conv(feat, ch, n_out, k=1, bias=head_bias, gain=HEAD_GAIN)
        raw = g.op("Reshape", [raw, g.const([0, n_out, gh * gw], dtype=np.int64)])
        sig = g.op("Sigmoid", [raw])
        gy, gx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grid = np.stack([gx.ravel(), gy.ravel()])[None].astype(np.float32)
        t_xy = g.op(
            "Slice",
            [sig, g.const([0], dtype=np.int64), g.const([2], dtype=np.int64), g.const([1], dtype=np.int64)],
        )
        t_wh = g.op(
            "Slice",
            [sig, g.const([2], dtype=np.int64), g.const([4], dtype=np.int64), g.const([1], dtype=np.int64)],
        )
        rest = g.op(
            "Slice",
            [
                sig,
                g.const([4], dtype=np.int64),
                g.const([n_out], dtype=np.int64),
                g.const([1], dtype=np.int64),
            ],
        )
        xy = g.op(
            "Mul",
            [
                g.op("Add", [g.op("Sub", [g.op("Mul", [t_xy, g.const(2.0)]), g.const(0.5)]), g.const(grid)]),
                g.const(float(stride)),
            ],
        )
        wh2 = g.op("Mul", [t_wh, g.const(2.0)])
        wh = g.op("Mul", [g.op("Mul", [wh2, wh2]), g.const(float(stride * 2))])
        levels.append(g.op("Concat", [xy, wh, rest], axis=1))
    det = g.op("Concat", levels, axis=2)  # [B, 5+C, N]: cx, cy, w, h, obj, classes

    def sl(t: str, a: int, b: int, axis: int = 1) -> str:
        return g.op(
            "Slice",
            [t, g.const([a], dtype=np.int64), g.const([b], dtype=np.int64), g.const([axis], dtype=np.int64)],
        )

    vi = helper.make_tensor_value_info
    batch: str | int = 1 if layout == "nms" else "batch"
    inputs = [vi("images", TensorProto.FLOAT, [batch, 3, h, w])]
    n_boxes = (h // 16) * (w // 16) + (h // 32) * (w // 32)
    xywh, obj, cls = sl(det, 0, 4), sl(det, 4, 5), sl(det, 5, n_out)

    def name_as(t: str, out: str) -> None:
        g.nodes.append(helper.make_node("Identity", [t], [out], name=out))

    if layout == "yolov8":
        name_as(g.op("Concat", [xywh, g.op("Mul", [cls, obj])], axis=1), "output0")
        outputs = [vi("output0", TensorProto.FLOAT, [batch, 4 + num_classes, n_boxes])]
    elif layout == "yolov5":
        name_as(g.op("Transpose", [det], perm=[0, 2, 1]), "output0")
        outputs = [vi("output0", TensorProto.FLOAT, [batch, n_boxes, n_out])]
    elif layout == "ssd":
        cxcy, half = sl(xywh, 0, 2), g.op("Mul", [sl(xywh, 2, 4), g.const(0.5)])
        norm = g.const(np.array([w, h], dtype=np.float32).reshape(1, 2, 1))
        xyxy = g.op(
            "Concat",
            [g.op("Div", [g.op("Sub", [cxcy, half]), norm]), g.op("Div", [g.op("Add", [cxcy, half]), norm])],
            axis=1,
        )
        name_as(g.op("Transpose", [xyxy], perm=[0, 2, 1]), "boxes")
        logit = g.op(
            "Log",
            [
                g.op(
                    "Div",
                    [g.op("Mul", [cls, obj]), g.op("Sub", [g.const(1.0 + 1e-6), g.op("Mul", [cls, obj])])],
                )
            ],
        )
        bg = g.op("Mul", [sl(logit, 0, 1), g.const(0.0)])
        scores = g.op("Concat", [bg, g.op("Add", [logit, g.const(2.0)])], axis=1)
        name_as(g.op("Transpose", [scores], perm=[0, 2, 1]), "scores")
        outputs = [
            vi("boxes", TensorProto.FLOAT, [batch, n_boxes, 4]),
            vi("scores", TensorProto.FLOAT, [batch, n_boxes, 1 + num_classes]),
        ]
    else:
        cxcy, half = sl(xywh, 0, 2), g.op("Mul", [sl(xywh, 2, 4), g.const(0.5)])
        xyxy = g.op("Concat", [g.op("Sub", [cxcy, half]), g.op("Add", [cxcy, half])], axis=1)
        boxes = g.op("Transpose", [xyxy], perm=[0, 2, 1])  # [1, N, 4]
        conf = g.op("Mul", [cls, obj])  # [1, C, N]
        sel = g.op(
            "NonMaxSuppression",
            [boxes, conf, g.const([100], dtype=np.int64), g.const([0.45]), g.const([0.25])],
            center_point_box=0,
        )
        box_idx = g.op("Gather", [sel, g.const(2, dtype=np.int64)], axis=1)
        cls_idx = g.op("Gather", [sel, g.const(1, dtype=np.int64)], axis=1)
        sel_boxes = g.op("Gather", [g.op("Squeeze", [boxes, g.const([0], dtype=np.int64)]), box_idx], axis=0)
        sel_scores = g.op("GatherND", [conf, sel])
        zero = g.const([0], dtype=np.int64)
        name_as(g.op("Unsqueeze", [sel_boxes, zero]), "det_boxes")
        name_as(g.op("Unsqueeze", [cls_idx, zero]), "det_labels")
        name_as(g.op("Unsqueeze", [sel_scores, zero]), "det_scores")
        outputs = [
            vi("det_boxes", TensorProto.FLOAT, [1, "k", 4]),
            vi("det_labels", TensorProto.INT64, [1, "k"]),
            vi("det_scores", TensorProto.FLOAT, [1, "k"]),
        ]
    return g.model(inputs, outputs, f"tiny_detector_{layout}")


def detector_descriptor(
    layout: DetectorLayout = "yolov8", size: tuple[int, int] = (320, 320), name: str = "tiny-detector"
) -> ModelDescriptor:
    """Description of `build_detector` for the given layout."""
    common: dict[str, Any] = {"score_threshold": 0.25, "iou_threshold": 0.45, "max_detections": 100}
    output: OutputSpec
    if layout == "yolov8":
        output = YoloV8Output(kind="yolov8", output="output0", **common)
    elif layout == "yolov5":
        output = YoloV5Output(kind="yolov5", output="output0", **common)
    elif layout == "ssd":
        output = SsdOutput(
            kind="ssd",
            boxes="boxes",
            scores="scores",
            activation="softmax",
            background_class=0,
            box_format=BoxFormat.XYXY,
            normalized=True,
            **{**common, "score_threshold": 0.4},
        )
    else:
        output = NmsOutput(
            kind="nms",
            boxes="det_boxes",
            labels="det_labels",
            scores="det_scores",
            box_format=BoxFormat.XYXY,
            **common,
        )
    labels = DETECTOR_LABELS if layout != "ssd" else ("background", *DETECTOR_LABELS)
    return ModelDescriptor(
        name=name if layout == "yolov8" else f"{name}-{layout}",
        version="1.0.0",
        task=Task.DETECTION,
        input=InputSpec(name="images", height=size[0], width=size[1], resize=ResizeMode.LETTERBOX),
        output=output,
        labels=labels,
    )
