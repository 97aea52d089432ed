"""One interface over the ways to run a detector: eager PyTorch, and the artifacts of dabdetr.deployment.export
in ONNX Runtime, as a torch.export program, or as an AOTInductor package.

    detector = load_detector("model.onnx")             # kind from the file: onnx, torch-export, aoti
    detector = load_detector("runs/demo/model")        # any checkpoint, run eagerly
    outputs = detector(images, mask)                   # {"logits": ..., "boxes": ...}
    detector.metadata["class_names"], detector.metadata["eval_size"]

Inputs are checked before they reach a runtime, so a wrong rank, dtype or mask shape is an error
naming the argument rather than a failure deep inside a graph.
"""

import json
import os
import zipfile

import torch

from dabdetr.deployment.export import EXPORT_FORMAT_TAG, METADATA_KEY, export_metadata, require_packages
from dabdetr.evaluation.precision import autocast_context, check_amp
from dabdetr.models.detector import checked_inputs
from dabdetr.weights.pretrained import load_pretrained

RUNTIMES = ("eager", "onnx", "torch-export", "aoti")


class Detector:
    """__call__(images [B, 3, H, W] float, mask [B, H, W] bool (True = padding; None: none), orig_sizes [B, 2]
    int64 (height, width; postprocess artifacts only)) -> {output name: tensor} with the names of
    metadata["outputs"] (dabdetr.deployment.export). kind: one of RUNTIMES."""

    kind = None

    def __init__(self, metadata, device="cpu"):
        self.metadata, self.device = metadata, torch.device(device)

    def __call__(self, images, mask=None, orig_sizes=None):
        mask = check_inputs(self.metadata, images, mask, orig_sizes, exported=self.kind != "eager")
        if self.metadata.get("image_size"):  # an artifact of one size (older metadata lack the key)
            images, mask = padded_to(images, mask, self.metadata["image_size"])
        args = (images, mask) + ((orig_sizes,) if self.metadata["postprocess"] else ())
        with torch.no_grad():
            return dict(zip(self.metadata["outputs"], self.run(*args)))

    def run(self, *args):
        raise NotImplementedError


class EagerDetector(Detector):
    """A DABDETR in eager mode (DABDETR.predict), in eval mode for each call and left in the mode
    it was in (a model being trained stays in training). amp: "off" (float32), "bf16" or "fp16"
    (autocast; outputs float32 all the same)."""

    kind = "eager"

    def __init__(self, model, class_names=None, eval_size=None, max_size=None, amp="off"):
        check_amp(amp)
        super().__init__(export_metadata(model, class_names, eval_size, max_size), next(model.parameters()).device)
        self.model, self.amp = model, amp

    def run(self, images, mask):
        training = self.model.training
        try:
            with autocast_context(self.device, self.amp):
                outputs = self.model.eval().predict(images, mask)
            return [output.float() for output in outputs] if self.amp != "off" else outputs
        finally:
            self.model.train(training)


class OnnxDetector(Detector):
    """An ONNX file in ONNX Runtime: its CUDA provider for device cuda where installed, else the CPU's."""

    kind = "onnx"

    def __init__(self, path, device="cpu"):
        onnx, ort, protobuf = require_packages("running an ONNX model", "onnx", "onnxruntime",
                                               "google.protobuf.message")
        try:
            proto = onnx.load(path, load_external_data=False)
        except protobuf.DecodeError as error:
            raise ValueError(f"{path}: not an ONNX model, or a damaged one ({error})") from None
        super().__init__(_checked_metadata(path, {p.key: p.value for p in proto.metadata_props}.get(METADATA_KEY)),
                         device)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        self.providers = providers
        self.session = ort.InferenceSession(path, providers=providers)

    def run(self, *args):
        feeds = {name: tensor.cpu().numpy() for name, tensor in zip(self.metadata["inputs"], args)}
        return [torch.from_numpy(array).to(self.device) for array in self.session.run(None, feeds)]


class ExportedProgramDetector(Detector):
    """A torch.export program (.pt2); its dabdetr:: ops run through the installed dabdetr."""

    kind = "torch-export"

    def __init__(self, path):
        extra_files = {f"{METADATA_KEY}.json": ""}
        program = torch.export.load(path, extra_files=extra_files)
        super().__init__(_checked_metadata(path, extra_files[f"{METADATA_KEY}.json"] or None))
        self.module = program.module()

    def run(self, *args):
        return self.module(*args)


class AotiDetector(Detector):
    """An AOTInductor package (.pt2), compiled for the CPU."""

    kind = "aoti"

    def __init__(self, path):
        runner = torch._inductor.aoti_load_package(path)
        super().__init__(_checked_metadata(path, runner.get_metadata().get(METADATA_KEY)))
        self.runner = runner

    def run(self, *args):
        return self.runner(*args)


def artifact_kind(path):
    """"onnx", "torch-export" or "aoti": what dabdetr.deployment.export wrote at path (a ValueError otherwise)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no exported model at {path}")
    if path.endswith(".onnx"):
        return "onnx"
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not an exported model (expected an .onnx file or a .pt2 archive from "
                         "`dabdetr export`)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return "aoti" if any("/data/aotinductor/" in name for name in names) else "torch-export"


def load_detector(path, runtime="auto", device="cpu", amp="off"):
    """The Detector of path: an exported artifact (.onnx, .pt2), whose kind "auto" reads from the
    file, or (runtime "auto" or "eager") any checkpoint load_pretrained reads, run eagerly with
    its class names and the image sizes it was evaluated at, in the precision amp says
    (EagerDetector; an exported model computes as it was exported)."""
    if runtime not in ("auto", *RUNTIMES):
        raise ValueError(f"runtime must be 'auto' or one of {RUNTIMES}, got {runtime!r}")
    check_amp(amp)
    exported = os.fspath(path).endswith((".onnx", ".pt2"))
    if runtime == "eager" and exported:
        raise ValueError(f"{path} is an exported model: run it with runtime onnx, torch-export or aoti (or auto)")
    if runtime == "eager" or (runtime == "auto" and not exported):
        model, metadata = load_pretrained(os.fspath(path))
        return EagerDetector(model.to(device), metadata["class_names"], metadata["eval_size"], metadata["max_size"],
                             amp)
    if amp != "off":
        raise ValueError(f"amp={amp!r} is for models run eagerly; {path} computes in the precision it was exported in")
    kind = artifact_kind(path)
    if runtime not in ("auto", kind):
        raise ValueError(f"{path} is a {kind} artifact, not one for runtime {runtime!r}")
    if kind == "onnx":
        return OnnxDetector(path, device)
    if torch.device(device).type != "cpu":
        raise ValueError(f"{path}: {kind} artifacts are exported for the CPU; run them with device cpu")
    return ExportedProgramDetector(path) if kind == "torch-export" else AotiDetector(path)


def _checked_metadata(path, text):
    metadata = json.loads(text) if text else None
    if not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT_TAG:
        raise ValueError(f"{path}: no dabdetr export metadata; export models with `dabdetr export`")
    return metadata


def padded_to(images, mask, size):
    """images [B, 3, H, W] and mask [B, H, W] padded at the right and bottom to size (height,
    width): zeros, and True (padding) in the mask."""
    pad = (0, size[1] - images.shape[-1], 0, size[0] - images.shape[-2])
    return torch.nn.functional.pad(images, pad), torch.nn.functional.pad(mask, pad, value=True)


def check_inputs(metadata, images, mask, orig_sizes=None, exported=True):
    """The mask (all False for None) once the inputs fit (DABDETR's checks, then an exported
    graph's: float32, its side range or at most its one image_size, orig_sizes); otherwise a
    ValueError/TypeError naming the argument whose rank, shape, dtype or device does not."""
    mask = checked_inputs(images, mask)
    if exported and images.dtype != torch.float32:
        raise TypeError(f"images must be float32 for an exported model, got {images.dtype}")
    B, _, H, W = images.shape
    fixed = metadata.get("image_size")
    if exported and fixed and not (fixed[0] >= H and fixed[1] >= W):
        raise ValueError(f"images: the exported model takes images of at most its image_size {fixed[0]} x "
                         f"{fixed[1]} (padded to it), got H={H}, W={W}")
    if exported and not fixed and not (metadata["min_side"] <= min(H, W) and max(H, W) <= metadata["max_side"]):
        raise ValueError(f"images: the exported model takes sides {metadata['min_side']} to {metadata['max_side']}, "
                         f"got H={H}, W={W}")
    if not metadata["postprocess"]:
        return mask
    if orig_sizes is None:
        raise ValueError("orig_sizes [B, 2] (height, width) is an input of this model (exported with postprocess)")
    if tuple(orig_sizes.shape) != (B, 2) or orig_sizes.dtype != torch.int64:
        raise ValueError(f"orig_sizes must be int64 of shape [B, 2] = {(B, 2)}, got {orig_sizes.dtype} "
                         f"{tuple(orig_sizes.shape)}")
    return mask
