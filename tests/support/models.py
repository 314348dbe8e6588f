"""Small validated models for end-to-end tests: classifier versions (new weights, same graph), colour classifiers,
and networks whose answers are another's permuted (versions that disagree on every input)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from models.descriptor import ChannelOrder, ClassificationOutput, InputSpec, Layout, ModelDescriptor, Task
from models.samples import build_classifier, classifier_descriptor
from models.validate import validate


def classifier_versions(
    out: Path, versions: tuple[str, ...] = ("1.0.0", "2.0.0"), name: str = "cls"
) -> dict[str, tuple[Path, ModelDescriptor]]:
    """Write `name-<version>.onnx` for each version (seed = its index) and return (path, validated descriptor)."""
    made = {}
    for seed, version in enumerate(versions):
        path = out / f"{name}-{version}.onnx"
        path.write_bytes(build_classifier(num_classes=10, seed=seed).SerializeToString())
        desc = classifier_descriptor(num_classes=10, height=64, width=64, name=name).model_copy(
            update={"version": version}
        )
        made[version] = (path, validate(path, desc).descriptor)
    return made


def permute_output(model: onnx.ModelProto, output: str, indices: list[int], axis: int = 1) -> onnx.ModelProto:
    """The same network with `output` gathered along `axis` by `indices` (e.g. labels permuted)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inner = f"{output}_unpermuted"
    for node in m.graph.node:
        node.output[:] = [inner if o == output else o for o in node.output]
    m.graph.initializer.append(numpy_helper.from_array(np.asarray(indices, dtype=np.int64), "permutation"))
    m.graph.node.append(helper.make_node("Gather", [inner, "permutation"], [output], axis=axis))
    return m


COLOURS = ("red", "green", "blue")


def colour_classifier(
    version: str, size: int, *, raw_bgr: bool = False, red_bias: float = 0.0, name: str = "colour"
) -> tuple[onnx.ModelProto, ModelDescriptor]:
    """A classifier whose logits are the image's mean red, green and blue (0..1), plus `red_bias` on red.

    Plain: float32 NCHW RGB input of `size` x `size`, pixels scaled by 1/255. With `raw_bgr`, the same
    function of the image takes raw uint8 pixels, NHWC, in BGR order, and scales them inside the graph: two
    versions that differ in input size, dtype, layout, channel order and normalisation, yet answer alike on
    any image when each gets the image preprocessed its own way (and `red_bias` is 0).
    """
    vi = helper.make_tensor_value_info
    nodes = []
    if raw_bgr:
        x = vi("image", TensorProto.UINT8, ["N", size, size, 3])
        nodes += [
            helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("GlobalAveragePool", ["nchw"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["bgr255"]),
            helper.make_node("Mul", ["bgr255", "inv255"], ["bgr"]),
            helper.make_node("Gather", ["bgr", "to_rgb"], ["means"], axis=1),
        ]
    else:
        x = vi("image", TensorProto.FLOAT, ["N", 3, size, size])
        nodes += [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["means"]),
        ]
    nodes.append(helper.make_node("Add", ["means", "bias"], ["logits"]))
    inits = [
        numpy_helper.from_array(np.asarray([red_bias, 0, 0], np.float32), "bias"),
        numpy_helper.from_array(np.asarray(1 / 255, np.float32), "inv255"),
        numpy_helper.from_array(np.asarray([2, 1, 0], np.int64), "to_rgb"),
    ]
    graph = helper.make_graph(nodes, name, [x], [vi("logits", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    spec = (
        InputSpec(name="image", height=size, width=size, dtype="uint8", layout=Layout.NHWC,
                  channel_order=ChannelOrder.BGR, scale=1.0)
        if raw_bgr
        else InputSpec(name="image", height=size, width=size)
    )  # fmt: skip
    desc = ModelDescriptor(
        name=name, version=version, task=Task.CLASSIFICATION, input=spec, labels=COLOURS,
        output=ClassificationOutput(kind="classification", output="logits", scores="logits", top_k=3),
    )  # fmt: skip
    return model, desc


def colour_photos() -> tuple[list[bytes], list[bool]]:
    """Eight PNG photos of one colour each, and whether a candidate with `red_bias=0.1` agrees on each.

    Two are green by a little (red within 0.1 of green): that candidate calls them red, so it agrees with
    the plain version on exactly 6 of 8 (75 %).
    """
    colours = [(200, 40, 40), (230, 90, 60), (160, 30, 20), (40, 200, 40), (30, 150, 90), (40, 40, 200),
               (180, 195, 40), (150, 170, 90)]  # fmt: skip
    photos = []
    for i, rgb in enumerate(colours):
        buf = io.BytesIO()
        Image.new("RGB", (64 + 8 * i, 48), rgb).save(buf, format="PNG")
        photos.append(buf.getvalue())
    agrees = [not (g > r and g - r < 0.1 * 255 and g > b) for r, g, b in colours]
    return photos, agrees


def with_outputs_that_are_not_tensors(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (a colour classifier) with what skl2onnx-style exports add beside `logits`: a ZipMap of the
    probabilities (`seq(map(int64,tensor(float)))`), the label as a string tensor, and a sequence of tensors."""
    ml = "ai.onnx.ml"
    g = model.graph
    g.node.extend([
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("ZipMap", ["probs"], ["probabilities"], domain=ml, classlabels_int64s=[0, 1, 2]),
        helper.make_node("ArgMax", ["logits"], ["label_id"], axis=1, keepdims=0),
        helper.make_node("LabelEncoder", ["label_id"], ["label"], domain=ml, keys_int64s=[0, 1, 2],
                         values_strings=list(COLOURS)),
        helper.make_node("SequenceConstruct", ["logits"], ["logit_seq"]),
    ])  # fmt: skip
    scalar = helper.make_tensor_type_proto(TensorProto.FLOAT, None)
    g.output.extend([
        helper.make_value_info("probabilities", helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.INT64, scalar))),
        helper.make_tensor_value_info("label", TensorProto.STRING, ["N"]),
        helper.make_value_info("logit_seq", helper.make_sequence_type_proto(
            helper.make_tensor_type_proto(TensorProto.FLOAT, ["N", 3]))),
    ])  # fmt: skip
    model.opset_import.append(helper.make_opsetid(ml, 3))
    return model


def without_batch_axis(model: onnx.ModelProto, size: int) -> onnx.ModelProto:
    """`model` (a float colour classifier of `size`) taking one image of [3, size, size], no batch axis: the graph
    adds one itself (Unsqueeze) and answers [1, 3]."""
    g = model.graph
    g.input[0].CopyFrom(helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, size, size]))
    g.node.insert(0, helper.make_node("Unsqueeze", ["image", "axis0"], ["batched"]))
    g.node[1].input[0] = "batched"
    g.initializer.append(numpy_helper.from_array(np.asarray([0], np.int64), "axis0"))
    g.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    return model
