"""Export of a DABDETR for deployment: ONNX, a torch.export program (.pt2), an AOTInductor package.

Every artifact computes DABDETR.predict in eval mode, so it holds no training-only part (no
denoising queries, no auxiliary heads), with a dynamic batch, height and width (or, with
image_size, one fixed height and width: the runtime pads smaller images to it), in float32 or
(amp="bf16", torch-export and aoti) under bfloat16 autocast, traced into the graph; the inputs and
outputs are float32 either way:

    inputs:  images [B, 3, H, W] float32, mask [B, H, W] bool (True = padding)
             (+ orig_sizes [B, 2] int64 (height, width) with postprocess)
    outputs: logits [B, Nq, K], boxes [B, Nq, 4] (cx, cy, w, h normalized by each unpadded image)
             or, with postprocess: scores [B, k], labels [B, k] int64, boxes [B, k, 4] (x0, y0, x1,
             y1 in orig_sizes pixels), the top k = num_select over queries x classes.

The fused ops stay opaque custom ops (dabdetr::...) in the torch.export program and the
AOTInductor package, which run them through the installed dabdetr. ONNX has no such ops: there
they are replaced by their PyTorch reference (dabdetr.ops.reference), which becomes standard
operators (MatMul, Softmax, Sin, Cos, Gather, ...) that any ONNX runtime, TensorRT included, can run.
Each artifact carries its metadata (EXPORT_FORMAT_TAG, class names, preprocessing sizes, amp) for
dabdetr.deployment.runtime.
"""

import copy
import json
import os
import tempfile

import torch
from torch import nn

from dabdetr.evaluation.precision import check_amp, traced_autocast
from dabdetr.models.detector import select_detections
from dabdetr.ops import reference
from dabdetr.weights.files import atomic_write

FORMATS = ("onnx", "torch-export", "aoti")
EXPORT_FORMAT_TAG = "dabdetr-export"
METADATA_KEY = "dabdetr"  # ONNX metadata_props key, .pt2 extra file stem, AOTInductor metadata key
ONNX_OPSET = 18
# Constants onnxscript's optimizer folds, in elements (its defaults, 8192 in and 262144 out, would
# leave ResNet's larger folded convolution weights computed in the graph on every run).
ONNX_FOLD_LIMIT = 2**26
# Image sides an artifact accepts: at least min_side(config), at most MAX_SIDE.
MAX_SIDE = 8192
PLAIN_IO = (("images", "mask"), ("logits", "boxes"))
POSTPROCESS_IO = (("images", "mask", "orig_sizes"), ("scores", "labels", "boxes"))
EXPORT_EXTRA_HINT = "pip install 'dabdetr[export]' (onnx, onnxruntime, onnxscript)"
# The precisions each format is exported in (amp). A bfloat16 ONNX graph is invalid at our opset
# (Conv takes no bfloat16 there), and ONNX Runtime 1.32 refuses to load it.
AMP_BY_FORMAT = {"onnx": ("off",), "torch-export": ("off", "bf16"), "aoti": ("off", "bf16")}


class DetectorGraph(nn.Module):
    """What an artifact computes: forward(images, mask) -> (logits, boxes), or with postprocess
    forward(images, mask, orig_sizes) -> (scores, labels, boxes) (see the module docstring); the
    model runs under autocast for amp "bf16" / "fp16", its outputs returned in float32. Puts model
    in eval mode."""

    def __init__(self, model, postprocess=False, amp="off"):
        super().__init__()
        check_amp(amp)
        self.model = model.eval()
        self.postprocess, self.amp = postprocess, amp

    def forward(self, images, mask, orig_sizes=None):
        # Inside forward, so that torch.export traces the autocast region into the graph.
        with traced_autocast(images.device, self.amp):
            logits, boxes = self.model.predict(images, mask)
        logits, boxes = logits.float(), boxes.float()
        if not self.postprocess:
            return logits, boxes
        return select_detections(logits, boxes, orig_sizes, self.model.config.num_select)


def min_side(config):
    """The smallest image side an artifact of this model accepts: one more than its coarsest
    feature map's stride (a ResNet stage: 2^(stage + 1), halved with DC5; each of DAB-Deformable-
    DETR's extra levels another 2), and at least 33. At a side of 1 in some map, which a smaller
    image makes, torch.export would specialize the graph."""
    stride = 2 ** (config.backbone_stage + 1) // (2 if config.dilation else 1)
    if config.architecture == "dab_deformable_detr":
        stride *= 2 ** (config.num_feature_levels - min(3, config.num_feature_levels))
    return max(33, stride + 1)


def export_metadata(model, class_names=None, eval_size=None, max_size=None, postprocess=False, amp="off",
                    image_size=None):
    """The dict every artifact carries: what runtime.py needs to feed it and read its outputs."""
    if image_size:
        check_image_size(image_size, min_side(model.config))
    inputs, outputs = POSTPROCESS_IO if postprocess else PLAIN_IO
    return {
        "format": EXPORT_FORMAT_TAG,
        "inputs": list(inputs),
        "outputs": list(outputs),
        "postprocess": postprocess,
        "amp": amp,
        "class_names": {str(label): name for label, name in (class_names or {}).items()},
        "eval_size": eval_size,
        "max_size": max_size,
        "min_side": min_side(model.config),
        "max_side": MAX_SIDE,
        "image_size": list(image_size) if image_size else None,
        "model_config": model.config.to_dict(),
    }


def export_program(model, metadata):
    """torch.export.ExportedProgram of the artifact export_metadata describes: DetectorGraph(model,
    metadata["postprocess"], metadata["amp"]) on the CPU, with float32 weights, inputs and outputs
    and a dynamic batch, with a dynamic height and width or the fixed metadata["image_size"]
    (height, width, checked there); the fused ops stay dabdetr:: custom ops. A model on another
    device or in another dtype is copied, not moved."""
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float().cpu()
    postprocess, image_size = metadata["postprocess"], metadata["image_size"]
    graph = DetectorGraph(model, postprocess, metadata["amp"])
    side = min_side(model.config)
    batch = torch.export.Dim("batch", min=1, max=4096)
    if image_size:
        images = torch.zeros(2, 3, *image_size)
        shapes = {"images": {0: batch}, "mask": {0: batch}}
    else:
        # Example sizes: batch 2, and sides whose feature maps are not 1 wide, keep every dim symbolic.
        images = torch.zeros(2, 3, max(128, 2 * side), max(160, 2 * side + 32))
        height = torch.export.Dim("height", min=side, max=MAX_SIDE)
        width = torch.export.Dim("width", min=side, max=MAX_SIDE)
        shapes = {"images": {0: batch, 2: height, 3: width}, "mask": {0: batch, 1: height, 2: width}}
    mask = torch.zeros(2, *images.shape[2:], dtype=torch.bool)
    mask[1, :, -32:] = True
    args = (images, mask)
    if postprocess:
        args += (torch.tensor([[480, 640], [600, 400]]),)
        shapes["orig_sizes"] = {0: batch}
    with torch.no_grad():
        return torch.export.export(graph, args, dynamic_shapes=shapes, strict=False)


def check_image_size(image_size, side):
    """A fixed (height, width) an artifact can be exported for: two ints from side (min_side) to MAX_SIDE."""
    if not (isinstance(image_size, (tuple, list)) and len(image_size) == 2
            and all(isinstance(v, int) and side <= v <= MAX_SIDE for v in image_size)):
        raise ValueError(f"image_size must be (height, width), each from {side} (this model's min_side) to "
                         f"{MAX_SIDE}, got {image_size!r}")


def _reference_attention(q_content, q_pos, k_content, k_pos, value, key_padding_mask, scale):
    out = reference.modulated_attention(q_content, q_pos, k_content, k_pos, value, key_padding_mask, scale)
    # The op's second output, the log-sum-exp, only serves its backward: inference never reads it
    # and the exporter drops it, so placeholder zeros of its shape and dtype stand in for it.
    return out, torch.zeros(out.shape[:-1], dtype=out.dtype, device=out.device)


def _reference_deformable_attention(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    # The index formulation: in the traced program the level sizes are tensor values, which
    # grid_sample's per-level reshapes would need as ints. 16-bit values (autocast's, with float32
    # locations) widened, as the op computes them.
    return reference.multi_scale_deformable_attention_by_index(value.to(sampling_locations.dtype), spatial_shapes,
                                                               sampling_locations, attention_weights)


REFERENCE_DECOMPOSITIONS = {
    "modulated_attention": _reference_attention,
    "anchor_sine_embed": reference.anchor_sine_embed,
    "modulated_anchor_sine_embed": reference.modulated_anchor_sine_embed,
    "multi_scale_deformable_attention": _reference_deformable_attention,
}


def decompose_custom_ops(program):
    """The program with every dabdetr:: op replaced by its PyTorch reference."""
    table = {getattr(torch.ops.dabdetr, name).default: fn for name, fn in REFERENCE_DECOMPOSITIONS.items()
             if hasattr(torch.ops.dabdetr, name)}  # without the extension the model never called them
    return program.run_decompositions(table)


def require_packages(what, *modules):
    """Imports modules, or raises an ImportError naming the [export] extra."""
    import importlib

    try:
        return [importlib.import_module(name) for name in modules]
    except ImportError as error:
        raise ImportError(f"{what} needs {', '.join(modules)} ({error}): {EXPORT_EXTRA_HINT}") from None


def export_onnx(model, path, metadata):
    """Writes the ONNX file: opset ONNX_OPSET, named inputs and outputs, dynamic dims named batch,
    height and width, metadata under metadata_props["dabdetr"]; checked by onnx.checker."""
    onnx, onnxscript = require_packages("ONNX export", "onnx", "onnxscript")
    program = decompose_custom_ops(export_program(model, metadata))
    onnx_program = torch.onnx.export(program, (), dynamo=True, opset_version=ONNX_OPSET, verbose=False,
                                     input_names=metadata["inputs"], output_names=metadata["outputs"])
    onnxscript.optimizer.optimize(onnx_program.model, input_size_limit=ONNX_FOLD_LIMIT,
                                  output_size_limit=ONNX_FOLD_LIMIT)
    proto = onnx_program.model_proto
    _name_dynamic_dims(proto)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata))
    onnx.checker.check_model(proto, full_check=True)
    atomic_write(path, lambda f: f.write(proto.SerializeToString()), binary=True)


def _name_dynamic_dims(proto):
    """The exporter names dims after its symbols (s0, s14, ...): renames those of the inputs to
    batch, height, width everywhere in the graph."""
    names = {}
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        labels = ("batch", None, "height", "width") if value.name == "images" else ("batch", "height", "width")
        for dim, label in zip(dims, labels):
            if label and dim.dim_param:
                names[dim.dim_param] = label
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def export_torch(model, path, metadata):
    """Writes the torch.export program (torch.export.save), metadata as extra file dabdetr.json."""
    program = export_program(model, metadata)
    extra_files = {f"{METADATA_KEY}.json": json.dumps(metadata)}
    atomic_write(path, lambda f: torch.export.save(program, f, extra_files=extra_files), binary=True)


def export_aoti(model, path, metadata):
    """Compiles the program ahead of time with AOTInductor (C++ here, minutes for R50) into a
    package; Inductor's freezing computes the convolutions' folded weights (the backbone's
    conv_norm) once, as constants."""
    program = export_program(model, metadata)
    configs = {"freezing": True, "aot_inductor.metadata": {METADATA_KEY: json.dumps(metadata)}}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)  # as atomic_write does for the other formats
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        staged = os.path.join(scratch, "model.pt2")
        torch._inductor.aoti_compile_and_package(program, package_path=staged, inductor_configs=configs)
        os.replace(staged, path)


EXPORTERS = {"onnx": export_onnx, "torch-export": export_torch, "aoti": export_aoti}


def export(model, path, format, class_names=None, eval_size=None, max_size=None, postprocess=False, amp="off",
           image_size=None):
    """Writes `model` as an artifact of `format` (one of FORMATS) at path, computing in the
    precision amp says (AMP_BY_FORMAT), for images of any size or of the one image_size (height,
    width): a graph specialized to it, which the runtime feeds padded images; returns its metadata."""
    if format not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {format!r}")
    if amp not in AMP_BY_FORMAT[format]:
        why = " (ONNX's Conv takes no bfloat16 at opset 18: ONNX Runtime refuses the graph)" if format == "onnx" else ""
        raise ValueError(f"export format {format} takes amp {' or '.join(AMP_BY_FORMAT[format])}, got {amp!r}{why}")
    metadata = export_metadata(model, class_names, eval_size, max_size, postprocess, amp, image_size)
    EXPORTERS[format](model, path, metadata)
    return metadata
