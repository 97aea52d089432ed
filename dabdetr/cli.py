"""The `dabdetr` command: train, eval, zoo, predict, export, convert (also `python -m dabdetr`).

    dabdetr train --preset demo --output-dir runs/demo          # synthetic shapes, CPU or GPU
    dabdetr train --preset demo --output-dir runs/demo --resume auto   # the same run, resumed (or started)
    dabdetr train --config runs/demo/config.json --seed 1 --output-dir runs/seed1   # its settings, one changed
    torchrun --nproc_per_node 8 -m dabdetr.cli train --preset dab_detr_r50 --data-root /data/coco
    dabdetr eval runs/demo/checkpoint.pt                         # its own validation set
    dabdetr eval weights.pth --annotations instances_val2017.json --images val2017/
    dabdetr zoo                                                  # the published checkpoints
    dabdetr eval dab-detr-r50 --data-root /data/coco             # one of them on COCO val2017
    torchrun --nproc_per_node 8 -m dabdetr.cli eval dab-detr-r50 --data-root /data/coco   # on 8 GPUs
    dabdetr predict runs/demo/model photos/ --output-dir predictions/ --save-images
    dabdetr export runs/demo/model model.onnx --format onnx      # also torch-export, aoti (.pt2)
    dabdetr predict model.onnx 'photos/*.jpg' --batch-size 8   # the runtime from the file (--runtime)
    dabdetr convert dab_detr_r50.pth converted/ --to dabdetr
    dabdetr convert runs/demo/model hf_model/ --to huggingface
"""

import argparse
import json
import logging
import os
import re

import torch

from dabdetr import host_memory
from dabdetr.data.coco import LABEL_MAPPINGS
from dabdetr.data.transforms import COCO_EVAL_SIZE, COCO_MAX_SIZE
from dabdetr.evaluation.precision import AMP_MODES
from dabdetr.weights.pretrained import SOURCES

LOG = logging.getLogger("dabdetr")
AMP_HELP = ("off: float32; bf16 / fp16: autocast, faster where the hardware computes in 16 bits (bf16 on a CPU: "
            "AVX-512 BF16 or AMX), scores moving by about a 16-bit rounding")
LOG_FORMAT, LOG_DATE_FORMAT = "%(asctime)s %(message)s", "%H:%M:%S"


def parse_assignments(pairs, what):
    """["a=1", "b=[480, 512]", "c=text"] -> {"a": 1, "b": [480, 512], "c": "text"} (JSON values, else strings)."""
    values = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"{what}: expected key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return values


# --- train -------------------------------------------------------------------------------------

def add_train_parser(subparsers):
    parser = subparsers.add_parser("train", help="train (and evaluate) a model",
                                   description="Trains on COCO (--data-root) or the embedded synthetic shapes.")
    parser.add_argument("--config", help="a JSON file of TrainConfig fields, all or some (a run's config.json); "
                                         "the other options override it")
    parser.add_argument("--preset", help="model preset and its training recipe (default: demo)")
    parser.add_argument("--data-root", help="COCO root (train2017/, val2017/, annotations/); default: synthetic shapes")
    parser.add_argument("--output-dir", help="default: outputs/train, or the resumed checkpoint's directory")
    parser.add_argument("--resume", help="a checkpoint.pt of an earlier run: continue it exactly (with --epochs, "
                                         "for longer); 'auto': the newest readable checkpoint in --output-dir, "
                                         "or a new run if it has none")
    parser.add_argument("--init", help="a DAB-DETR checkpoint to start from: any from_pretrained reads (a path, a "
                                       "published model's name, a hub id, a URL)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="per process")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--device", help="auto | cpu | cuda")
    parser.add_argument("--amp", choices=AMP_MODES, help=AMP_HELP + "; fp16 with a gradient scaler")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="the backbone, encoder and decoder under torch.compile (a minute or two of compiling, "
                             "then faster steps; docs/training.md)")
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", dest="train_overrides", action="append", metavar="FIELD=VALUE",
                        help="any TrainConfig field, e.g. --set lr_drop=11 --set train_sizes=[608,640]")
    parser.add_argument("--model", dest="model_overrides", action="append", metavar="FIELD=VALUE",
                        help="any DABDETRConfig field, e.g. --model num_queries=100")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars (logs only)")
    parser.set_defaults(run=run_train)


def run_train(args):
    from dabdetr import distributed
    from dabdetr.training.config import TrainConfig, recipe
    from dabdetr.training.preemption import EXIT_CODE, TrainingPreempted
    from dabdetr.training.trainer import Trainer

    overrides = {**read_config_file(args.config), **parse_assignments(args.train_overrides, "--set")}
    for name in ("output_dir", "data_root", "init", "epochs", "batch_size", "lr", "device", "amp", "compile",
                 "num_workers", "seed", "preset"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    model = parse_assignments(args.model_overrides, "--model")
    if model:
        overrides["model"] = {**overrides.get("model", {}), **model}
    if args.no_progress:
        overrides["progress"] = False
    if args.config and args.resume:
        raise SystemExit("train: --config starts a run from its settings; a resumed run keeps its checkpoint's "
                         "(change some with --set)")
    path, checkpoint = resume_checkpoint(args.resume, overrides.get("output_dir", TrainConfig.output_dir))
    if checkpoint is not None:
        try:
            trainer = Trainer.from_checkpoint(path, checkpoint, **overrides)
        except ValueError as error:
            raise SystemExit(f"train --resume: {error}") from None
    else:
        trainer = Trainer(recipe(overrides.pop("preset", "demo"), **overrides))
    config = trainer.config
    log_file = log_to_file(os.path.join(config.output_dir, "train.log")) if distributed_rank() == 0 else None
    try:
        metrics = trainer.fit()
    except TrainingPreempted as stop:
        preempted = str(stop)  # not the exception: its traceback holds the Trainer (and its loader workers)
    else:
        preempted = None
    finally:
        if log_file is not None:
            LOG.removeHandler(log_file)
            log_file.close()
    del trainer  # its DDP model holds the process group
    distributed.shutdown()
    if preempted is not None:
        if distributed_rank() == 0:
            LOG.warning("preempted: %s. Resume with the same command and --resume auto (or: dabdetr train --resume "
                        "auto --output-dir %s); exit code %d", preempted, config.output_dir, EXIT_CODE)
        raise SystemExit(EXIT_CODE)
    if distributed_rank() == 0:
        print(json.dumps({k: v for k, v in metrics.items() if k not in ("table", "classes")}))
        print("pictures: " + ", ".join(os.path.join(config.output_dir, name)
                                       for name in ("curves.png", "category_ap.png", "detections.png")))


def read_config_file(path):
    """The TrainConfig fields of a --config JSON file ({} without one); errors name the file."""
    if path is None:
        return {}
    try:
        with open(path) as f:
            values = json.load(f)
    except OSError as error:
        raise SystemExit(f"train --config: cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise SystemExit(f"train --config: {path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise SystemExit(f"train --config: {path} must hold a JSON object of TrainConfig fields, "
                         f"not a {type(values).__name__}")
    return values


def distributed_rank():
    return int(os.environ.get("RANK", 0))


def log_to_file(path):
    """Adds a handler writing the "dabdetr" log to path (appending); returns it."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    LOG.addHandler(handler)
    return handler


def resume_checkpoint(resume, output_dir):
    """(path, checkpoint) to resume from: --resume PATH, or with 'auto' the newest readable one in
    output_dir; (None, None) for a new run."""
    from dabdetr.training.checkpoint import find_resume_checkpoint, load_train_checkpoint

    if not resume:
        return None, None
    if resume != "auto":
        return resume, load_train_checkpoint(resume)
    path, checkpoint = find_resume_checkpoint(output_dir)
    LOG.info("--resume auto: %s", f"resuming from {path}" if path else f"no checkpoint in {output_dir}, a new run")
    return path, checkpoint


# --- eval --------------------------------------------------------------------------------------

def load_model(path, device):
    """(model on device, metadata) of any checkpoint from_pretrained reads (see load_pretrained)."""
    from dabdetr.weights.pretrained import load_pretrained

    model, metadata = load_pretrained(path)
    return model.to(device), metadata


def add_eval_parser(subparsers):
    parser = subparsers.add_parser("eval", help="COCO box AP of a model on a COCO-format set")
    parser.add_argument("checkpoint", help="any checkpoint from_pretrained reads: a training checkpoint, a "
                                           "dabdetr/Hugging Face directory, an official or MMDetection .pth, a "
                                           "published model's name (dabdetr zoo), a Hugging Face hub id, a URL")
    parser.add_argument("--data-root", help="a COCO root: evaluates on its val2017/ with "
                                            "annotations/instances_val2017.json")
    parser.add_argument("--annotations", help="COCO json; default: the validation set a training checkpoint used")
    parser.add_argument("--images", help="image directory of --annotations")
    parser.add_argument("--label-mapping", choices=("auto", *LABEL_MAPPINGS), default="auto",
                        help="how logits map to category ids (auto: by id when the head has more logits than the "
                             "largest id, else contiguous)")
    parser.add_argument("--eval-size", type=int, default=None,
                        help=f"shorter side (default {COCO_EVAL_SIZE}, or the checkpoint's)")
    parser.add_argument("--max-size", type=int, default=None,
                        help=f"longer side cap (default {COCO_MAX_SIZE}, or the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=AMP_MODES, default="off", help=AMP_HELP)
    add_host_memory_argument(parser)
    parser.add_argument("--output", default="detections.json", help="COCO results json to write")
    parser.add_argument("--metrics", help="also write the metrics as json: AP, AP50, AP75, APs, APm, APl and "
                                          "classes (AP and AP50 of each category)")
    parser.set_defaults(run=run_eval)


def add_host_memory_argument(parser):
    parser.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="on the CPU, keep freed memory for the next images' tensors (float32 R50 forwards "
                             "12-25%% faster); the process keeps its peak heap, so a machine tight on memory "
                             "may want --no-keep-freed-memory (training's keep_freed_memory)")


def keep_host_memory(args, device):
    """On the CPU, unless --no-keep-freed-memory, glibc keeps freed memory for the next forward's
    tensors (dabdetr.host_memory), as training does."""
    if device.type == "cpu" and args.keep_freed_memory:
        host_memory.keep_freed_memory()


def run_eval(args):
    """COCO evaluation; under torchrun each process evaluates its share of the images and the
    first one prints and writes the results of all."""
    from dabdetr import distributed
    from dabdetr.data import collate_detection
    from dabdetr.data.worker_logging import WorkerLogHandlers
    from dabdetr.evaluation.coco_eval import per_category_table
    from dabdetr.evaluation.evaluator import evaluate

    device = distributed.resolve_device(args.device)
    rank, world_size, local_rank = distributed.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
    keep_host_memory(args, device)
    model, metadata = load_model(args.checkpoint, device)
    dataset = eval_dataset(args, model, metadata)
    sampler = torch.utils.data.DistributedSampler(dataset, world_size, rank, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, args.batch_size, sampler=sampler, num_workers=args.num_workers,
                                         collate_fn=collate_detection, worker_init_fn=WorkerLogHandlers())
    metrics, results = evaluate(model, loader, dataset.coco, dataset.label_to_category_id, device,
                                model.config.num_select, args.amp)
    if rank == 0:
        print(metrics.pop("table"), end="")
        print(per_category_table(metrics["classes"]), end="")
        print(json.dumps({k: v for k, v in metrics.items() if k != "classes"}))
        with open(args.output, "w") as f:
            json.dump(results, f)
        if args.metrics:
            with open(args.metrics, "w") as f:
                json.dump(metrics, f, indent=1)
        processes = f" by {world_size} processes" if world_size > 1 else ""
        print(f"{len(results)} detections on {len(dataset)} images{processes} written to {args.output}")
    distributed.shutdown()  # not on an error: torchrun stops the other processes then


def eval_dataset(args, model, metadata):
    """The dataset `dabdetr eval` measures: --data-root's val2017, --annotations / --images, or
    the validation set of the training checkpoint's run."""
    from dabdetr.data import CocoDetection, build_datasets, load_coco, make_transforms
    from dabdetr.training.config import TrainConfig

    if args.data_root is not None:
        if args.annotations or args.images:
            raise SystemExit("eval: --data-root names the annotations and images; give it or them, not both")
        defaults = TrainConfig()
        args.annotations = os.path.join(args.data_root, defaults.val_annotations)
        args.images = os.path.join(args.data_root, defaults.val_images)
    if args.annotations is None:
        if metadata["train_config"] is None:
            raise SystemExit("eval: --annotations is needed unless the checkpoint is a training checkpoint")
        train_config = TrainConfig.from_dict(metadata["train_config"])
        overrides = {k: v for k, v in (("eval_size", args.eval_size), ("max_size", args.max_size)) if v is not None}
        return build_datasets(train_config.replace(**overrides))[1]
    if args.images is None:
        raise SystemExit("eval: --annotations needs --images")
    coco = load_coco(args.annotations)
    mapping = args.label_mapping
    if mapping == "auto":
        mapping = "category_id" if model.config.num_classes > max(coco.cats) else "contiguous"
    transforms = make_transforms(False, [args.eval_size or COCO_EVAL_SIZE], args.max_size or COCO_MAX_SIZE)
    dataset = CocoDetection(coco, args.images, transforms, mapping)
    if dataset.num_classes > model.config.num_classes:
        raise SystemExit(f"eval: the model has {model.config.num_classes} logits but the dataset needs "
                         f"{dataset.num_classes} ({mapping} labels)")
    return dataset


# --- zoo ---------------------------------------------------------------------------------------

def add_zoo_parser(subparsers):
    parser = subparsers.add_parser("zoo", help="the published DAB-DETR checkpoints, by the names the other commands "
                                               "take")
    parser.set_defaults(run=run_zoo)


def run_zoo(args):
    from dabdetr.weights import zoo

    print(zoo.table(), end="")
    print("Evaluate one with: dabdetr eval NAME --data-root COCO_ROOT; weights are fetched once into the Hugging "
          "Face or torch cache.")


# --- predict -----------------------------------------------------------------------------------

def add_predict_parser(subparsers):
    from dabdetr.deployment.runtime import RUNTIMES

    parser = subparsers.add_parser("predict", help="detect objects in images: COCO results JSON, annotated PNGs")
    parser.add_argument("model", help="any checkpoint from_pretrained reads (run eagerly), or a file `dabdetr "
                                      "export` wrote (.onnx, .pt2)")
    parser.add_argument("images", nargs="+", help="image files, folders and glob patterns")
    parser.add_argument("--runtime", choices=("auto", *RUNTIMES), default="auto",
                        help="auto: eager for a checkpoint, the artifact's own runtime for an exported file")
    parser.add_argument("--output-dir", default="predictions",
                        help="gets detections.json (COCO results), images.json (their image ids) and, with "
                             "--save-images, one PNG per image")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="detections kept and drawn")
    parser.add_argument("--save-images", action="store_true", help="write annotated PNGs")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward (grouped by aspect ratio)")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=None,
                        help=f"shorter side the model sees (default: the size it was evaluated at in training, "
                             f"kept in training checkpoints, model directories and exports; else {COCO_EVAL_SIZE})")
    parser.add_argument("--max-size", type=int, default=None,
                        help=f"longer side cap (default: as --size, else {COCO_MAX_SIZE})")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave out (with a warning) images that cannot be read, instead of stopping")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=AMP_MODES, default="off", help=AMP_HELP + " (a model run eagerly)")
    add_host_memory_argument(parser)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run_predict)


def run_predict(args):
    from dabdetr.data.images import list_images
    from dabdetr.deployment.predict import predict_images
    from dabdetr.deployment.runtime import load_detector
    from dabdetr.distributed import resolve_device

    paths = list_images(args.images)
    device = resolve_device(args.device)
    keep_host_memory(args, device)
    detector = load_detector(args.model, args.runtime, device, args.amp)
    os.makedirs(args.output_dir, exist_ok=True)
    picture_dir = args.output_dir if args.save_images else None
    results, images = predict_images(detector, paths, args.batch_size, args.num_workers, args.score_threshold,
                                     args.size, args.max_size, picture_dir, progress=not args.no_progress,
                                     skip_bad_images=args.skip_bad_images)
    for name, content in (("detections.json", results), ("images.json", images)):
        with open(os.path.join(args.output_dir, name), "w") as f:
            json.dump(content, f)
    skipped = f" ({len(paths) - len(images)} unreadable ones skipped)" if len(images) < len(paths) else ""
    print(f"{len(results)} detections (score >= {args.score_threshold}) in {len(images)} images{skipped}: "
          f"{args.output_dir}/detections.json{' and one PNG per image' if args.save_images else ''}")


# --- export ------------------------------------------------------------------------------------

def add_export_parser(subparsers):
    from dabdetr.deployment.export import FORMATS

    parser = subparsers.add_parser("export", help="export a model for deployment: ONNX, torch.export, AOTInductor",
                                   description="Writes one artifact with dynamic batch, height and width (or "
                                               "one fixed image size); inputs images [B, 3, H, W] and mask [B, H, "
                                               "W] (True = padding).")
    parser.add_argument("model", help="any checkpoint from_pretrained reads")
    parser.add_argument("output", help="the file to write (.onnx for onnx, .pt2 otherwise)")
    parser.add_argument("--format", choices=FORMATS, required=True,
                        help="onnx: standard operators (the fused ops lowered to their reference); torch-export: a "
                             ".pt2 program keeping the dabdetr ops; aoti: an AOTInductor package (compiled, CPU)")
    parser.add_argument("--with-postprocess", action="store_true",
                        help="add input orig_sizes [B, 2] and output the top-k scores, labels and xyxy pixel boxes")
    parser.add_argument("--amp", choices=("off", "bf16"), default="off",
                        help="bf16: the graph computes under bfloat16 autocast (torch-export and aoti; inputs and "
                             "outputs stay float32), faster on CPUs with AVX-512 BF16 or AMX")
    parser.add_argument("--image-size", type=image_size, default=None, metavar="HEIGHTxWIDTH",
                        help="a graph for this one image size (the runtime pads smaller images to it), instead of "
                             "any: compiled code specialized to it (aoti: DAB-Deformable-DETR R50 1.6-1.8x faster)")
    parser.set_defaults(run=run_export)


def image_size(text):
    """argparse type of HEIGHTxWIDTH: (height, width)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, such as 800x1088, got {text!r}") from None
    return height, width


def run_export(args):
    from dabdetr.deployment.export import export

    suffix = ".onnx" if args.format == "onnx" else ".pt2"
    if not args.output.endswith(suffix):
        raise ValueError(f"export --format {args.format} writes a {suffix} file; got output {args.output}")
    model, metadata = load_model(args.model, torch.device("cpu"))
    export(model, args.output, args.format, metadata["class_names"], metadata["eval_size"], metadata["max_size"],
           postprocess=args.with_postprocess, amp=args.amp, image_size=args.image_size)
    size = f", images of {args.image_size[0]}x{args.image_size[1]}" if args.image_size else ""
    print(f"wrote {args.output} ({args.format}{', with post-processing' if args.with_postprocess else ''}"
          f"{', bf16 autocast' if args.amp == 'bf16' else ''}{size})")


# --- convert -----------------------------------------------------------------------------------

CONVERT_TARGETS = ("dabdetr", "huggingface", "official", "mmdetection")


def add_convert_parser(subparsers):
    parser = subparsers.add_parser("convert", help="convert a checkpoint between formats")
    parser.add_argument("source", help="any checkpoint from_pretrained reads")
    parser.add_argument("destination", help="a directory (--to dabdetr, huggingface) or a .pth file")
    parser.add_argument("--to", choices=CONVERT_TARGETS, required=True)
    parser.add_argument("--source-format", default="auto", choices=SOURCES)
    parser.add_argument("--timm-backbone", action="store_true",
                        help="--to huggingface: the hub checkpoints' timm ResNet (needed for DC5) instead of "
                             "Hugging Face's own, which loads without timm")
    parser.set_defaults(run=run_convert)


def run_convert(args):
    from dabdetr.weights.files import atomic_torch_save
    from dabdetr.weights.pretrained import (
        load_pretrained,
        official_args,
        save_huggingface,
        to_mmdetection_state_dict,
        to_official_state_dict,
    )

    if args.timm_backbone and args.to != "huggingface":
        raise SystemExit(f"convert: --timm-backbone applies to --to huggingface only, not --to {args.to}")
    model, metadata = load_pretrained(args.source, source=args.source_format)
    if args.to == "dabdetr":
        model.save_pretrained(args.destination, metadata["class_names"], metadata["eval_size"], metadata["max_size"])
    elif args.to == "huggingface":
        save_huggingface(model, args.destination, metadata["class_names"], args.timm_backbone)
    elif args.to == "official":
        atomic_torch_save({"model": to_official_state_dict(model), "args": official_args(model.config)},
                          args.destination)
    else:
        atomic_torch_save({"state_dict": to_mmdetection_state_dict(model)}, args.destination)
    print(f"wrote {args.destination} ({args.to})")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dabdetr", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--debug", action="store_true", help="show the whole traceback of an error")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (add_train_parser, add_eval_parser, add_zoo_parser, add_predict_parser, add_export_parser,
                add_convert_parser):
        add(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt=LOG_DATE_FORMAT)
    try:
        args.run(args)
    except (FileNotFoundError, ValueError, ImportError) as error:
        if args.debug:
            raise
        LOG.error("dabdetr %s: %s (--debug shows where)", args.command, error_message(error))
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        if args.debug:
            raise
        resume = ("; the same command with --resume auto continues from the last checkpoint"
                  if args.command == "train" else "")
        LOG.error("dabdetr %s: interrupted%s", args.command, resume)
        raise SystemExit(130) from None  # 128 + SIGINT, as shells report it


def error_message(error):
    """str(error); for an error raised in a DataLoader worker process, the original error's
    message alone (the main process re-raises it with the worker's traceback as its text)."""
    text = str(error).rstrip("\n")
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    lines = text.split("\n")
    original = re.compile(rf"(\w+\.)*{type(error).__name__}: ")  # the last line that names the error
    last = max((i for i, line in enumerate(lines) if original.match(line)), default=None)
    if last is None:
        return text
    return "\n".join([original.sub("", lines[last], count=1), *lines[last + 1:]])


if __name__ == "__main__":
    main()
