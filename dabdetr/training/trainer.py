"""The Trainer: datasets, model, loss and optimizer from one TrainConfig; the epoch loop with
COCO evaluation, logs, curves, atomic checkpoints and exact resume; torchrun DDP.

Files in output_dir (written by rank 0):
    checkpoint.pt   the latest state (every checkpoint_epochs epochs and each evaluated one, every
                    checkpoint_every steps, and on a preemption signal; --resume continues from it
                    exactly)
    checkpoint_epochNNNN.pt  the state after NNNN epochs, the newest keep_last of them
    best.pt         the same at the best AP so far
    config.json     the run's TrainConfig but output_dir (dabdetr train --config reads it back)
    log.jsonl       one JSON record per line: "train" (every log_every steps), "epoch", "eval"
    train.log       the text log
    curves.png      losses and AP over epochs (after each evaluation, else at most once a minute)
    metrics.json    the final evaluation (AP, AP50, AP75, APs, APm, APl as fractions; classes: each category's)
    category_ap.png the final AP and AP50 of each category
    detections.png  predictions on held-out images
    model/          the final model for dabdetr.from_pretrained
    tensorboard/    with tensorboard=True: the log.jsonl numbers and the evaluation pictures
"""

import contextlib
import functools
import json
import logging
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler

from dabdetr import distributed, host_memory
from dabdetr.data import build_datasets, collate_detection
from dabdetr.data.batching import TrainBatchSampler
from dabdetr.data.worker_logging import WorkerLogHandlers
from dabdetr.evaluation.coco_eval import per_category_table
from dabdetr.evaluation.evaluator import evaluate
from dabdetr.models import build_model
from dabdetr.models.config import DABDETRConfig, preset
from dabdetr.training.checkpoint import keep_epoch_checkpoint, load_train_checkpoint, rng_state, set_rng_state
from dabdetr.training.compilation import CompiledEncodeDecode
from dabdetr.training.config import TrainConfig
from dabdetr.training.criterion import SetCriterion
from dabdetr.training.engine import train_one_epoch
from dabdetr.training.matcher import HungarianMatcher
from dabdetr.training.preemption import PreemptionRequest, TrainingPreempted, ignore_preemption_signals
from dabdetr.training.time_budget import TimeBudget
from dabdetr.weights.backbone import NONE, load_backbone_weights
from dabdetr.weights.files import atomic_torch_save, atomic_write
from dabdetr.weights.formats.native import RUN_BEST, RUN_LATEST, RUN_MODEL_DIR, TRAIN_CHECKPOINT_FORMAT

logger = logging.getLogger("dabdetr")
CONFIG = "config.json"  # in output_dir: the run's TrainConfig, without output_dir
LOG = "log.jsonl"  # in output_dir: one JSON record per logged step, epoch and evaluation


def build_model_config(config: TrainConfig, num_classes):
    """The preset's DABDETRConfig with the config's overrides; num_classes from the dataset unless
    overridden (and then it must cover the dataset's labels)."""
    model_config = preset(config.preset, **{"num_classes": num_classes, **config.model})
    if model_config.num_classes < num_classes:
        raise ValueError(f"model num_classes={model_config.num_classes} is smaller than the dataset's "
                         f"{num_classes} labels")
    return model_config


def check_backbone_start(model_config: DABDETRConfig, config: TrainConfig):
    """Refuses a new run whose backbone would stay random where it is frozen: frozen batch norm
    or frozen stages with neither backbone weights nor init (unless allow_random_backbone)."""
    frozen = (model_config.backbone_norm == "frozen_bn" or model_config.backbone_frozen_stages
              or not model_config.train_backbone)
    if frozen and model_config.backbone_weights == NONE and not config.init and not config.allow_random_backbone:
        raise ValueError(
            f"the model freezes its backbone's batch norm{' and stem + layer1' * model_config.backbone_frozen_stages} "
            "but starts from random weights (backbone_weights='none'), which could never train. Start from "
            "pretrained weights (--model backbone_weights=imagenet, a URL or a file; or --init a DAB-DETR checkpoint), "
            "or train the backbone from scratch (--model backbone_norm=batch_norm --model backbone_frozen_stages=0), "
            "or run it as it is with --set allow_random_backbone=true")


def load_initial_weights(model, path):
    """Copies pretrained weights (any from_pretrained format) into model; tensors whose shape
    differs (a class head for other classes) keep their initialization, and are listed."""
    from dabdetr.weights.pretrained import from_pretrained

    source = from_pretrained(path).state_dict()
    target = model.state_dict()
    fitting = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    skipped = sorted(set(target) - set(fitting))
    model.load_state_dict(fitting, strict=False)
    if skipped:
        logger.info("init from %s: kept the initialization of %d tensors that do not fit: %s", path, len(skipped),
                    skipped[:10])


def peak_memory_mb(device):
    """Peak memory since the last reset: CUDA allocations, or on the CPU the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


CURVES_INTERVAL_S = 60


def parameter_groups(model, config: TrainConfig):
    """AdamW groups: the backbone at lr_backbone, the rest at lr (weight decay on all, as published)."""
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    return [{"params": rest, "lr": config.lr}, {"params": backbone, "lr": config.lr_backbone}]


def lr_scheduler(optimizer, config: TrainConfig):
    """The epoch-wise lr schedule of config.lr_schedule (stepped after each epoch)."""
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.StepLR(optimizer, config.lr_drop)


def start_loader_worker(main_pid, log_handlers, worker_id):
    """worker_init_fn of the training loaders: the run's log handlers (where a spawned worker
    lacks them) and the preemption signals left to the main process (main_pid)."""
    log_handlers(worker_id)
    ignore_preemption_signals(main_pid, worker_id)


class Trainer:
    """Trainer(config).fit() trains, evaluates and writes output_dir (module doc); a saved run
    continues with Trainer.from_checkpoint(path). Logs go to the "dabdetr" logger (the CLI also
    writes them to output_dir/train.log)."""

    # The settings a resumed run may change: none of them changes what it computes.
    RESUMABLE_CHANGES = ("output_dir", "epochs", "device", "num_workers", "progress", "eval_every",
                         "checkpoint_every", "checkpoint_epochs", "keep_last", "skip_bad_images", "tensorboard",
                         "cache_images", "allow_random_backbone", "keep_freed_memory", "compile")

    @classmethod
    def from_checkpoint(cls, path, checkpoint=None, **changes):
        """The run saved at path (a checkpoint written by a Trainer), continued at the step after
        it (an epoch's end, or within an epoch) with the same model, optimizer, scheduler,
        generator states, loss sums and best AP: the run it would have been without the
        interruption. output_dir defaults to the checkpoint's directory. changes: TrainConfig
        fields; those outside RESUMABLE_CHANGES must equal the saved values (so the command
        line that started the run can resume it). checkpoint: path's content, if already read."""
        checkpoint = load_train_checkpoint(path) if checkpoint is None else checkpoint
        saved = TrainConfig.from_dict(checkpoint["train_config"])
        config = saved.replace(**{"output_dir": os.path.dirname(os.path.abspath(path)), **changes})
        changed = sorted(k for k in changes
                         if k not in cls.RESUMABLE_CHANGES and getattr(config, k) != getattr(saved, k))
        if changed:
            raise ValueError(f"{changed} cannot change when resuming {path} (only {list(cls.RESUMABLE_CHANGES)} can)")
        if config.lr_schedule == "cosine" and config.epochs != saved.epochs:
            raise ValueError(f"epochs cannot change when resuming {path}: its cosine lr schedule spans its "
                             f"{saved.epochs} epochs")
        return cls(config, _resume=(path, checkpoint))

    def __init__(self, config: TrainConfig, _resume=None):
        resume_path, checkpoint = _resume or (None, None)
        self.config = config
        self.device = distributed.resolve_device(config.device)
        self.rank, self.world_size, local_rank = distributed.init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank)
        elif config.keep_freed_memory:
            setting = host_memory.keep_freed_memory()
            if setting:
                logger.info("host memory: %s (keep_freed_memory=False leaves malloc as it is)", setting)
        self.is_main = self.rank == 0
        self.output_dir = config.output_dir
        self.log_path = os.path.join(self.output_dir, LOG)
        if self.is_main:
            os.makedirs(self.output_dir, exist_ok=True)
        torch.manual_seed(config.seed + self.rank)

        if checkpoint is None:  # before the datasets, which can take a while to load
            check_backbone_start(preset(config.preset, **config.model), config)
        self.train_set, self.val_set = build_datasets(config)
        if checkpoint is not None:
            model_config = DABDETRConfig.from_dict(checkpoint["model_config"])
        else:
            model_config = build_model_config(config, self.train_set.num_classes)
        torch.manual_seed(config.seed)  # the same initial model on every rank
        self.model = build_model(model_config).to(self.device)
        if self.rank > 0:
            # Then a stream of its own (dropout, denoising noise); rank 0 continues the one above,
            # so a one-process run is unchanged by the number of processes it could have had.
            torch.manual_seed(config.seed + 1_000_003 * self.rank)
        if checkpoint is None:
            if config.init:
                load_initial_weights(self.model, config.init)
            else:
                self._load_backbone_weights(local_rank)
        self.ddp_model = self.model
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # A batch without objects on one process leaves the denoising label embedding unused there.
            self.ddp_model = DistributedDataParallel(self.model, device_ids=device_ids,
                                                     find_unused_parameters=model_config.dn_groups > 0)

        matcher = HungarianMatcher(config.cost_class, config.cost_bbox, config.cost_giou, config.focal_alpha,
                                   config.focal_gamma)
        self.criterion = SetCriterion(model_config.num_classes, matcher, config.loss_ce, config.loss_bbox,
                                      config.loss_giou, config.focal_alpha, config.focal_gamma)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, config), lr=config.lr,
                                           weight_decay=config.weight_decay,
                                           fused=self.device.type in ("cpu", "cuda"))  # one kernel per step
        self.scheduler = lr_scheduler(self.optimizer, config)
        self.grad_scaler = torch.amp.GradScaler(self.device.type) if config.amp == "fp16" else None
        # The weights evaluated and exported: the model's, or their moving average.
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
                    if config.ema_decay else None)
        self.eval_model = self.ema.module if self.ema is not None else self.model
        # After the moving average's copy, which must not share the compiled function.
        self.compiled = CompiledEncodeDecode(self.model) if config.compile else None
        if config.compile and (config.data_root or len(set(config.train_sizes)) > 1 or config.crop_resize_sizes):
            logger.warning("compile=True with training images of varying size: torch %s compiles anew for each "
                           "new size (about a minute on 2 CPU cores) up to its limit of 8 graphs, then runs eagerly; "
                           "it pays with images of one size (docs/training.md)", torch.__version__)
        self.start_epoch, self.best_ap, self.log_records = 0, None, []
        self.start_step, self.epoch_totals = 0, {"steps": 0}  # within start_epoch (a mid-epoch resume)
        self.time_budget = TimeBudget(config.time_budget_min, config.epochs) if config.time_budget_min else None
        if checkpoint is not None:
            self._restore(checkpoint, resume_path)
        elif self.is_main:
            self._start_new_log()
        if self.is_main:  # the settings as this process runs them (a resume may have changed some)
            settings = {k: v for k, v in config.to_dict().items() if k != "output_dir"}
            atomic_write(os.path.join(self.output_dir, CONFIG), lambda f: json.dump(settings, f, indent=1))

        portrait = self.train_set.portrait_flags() if config.group_by_aspect_ratio else None
        self.train_batches = TrainBatchSampler(self.train_set, config.batch_size, self.world_size, self.rank,
                                               config.seed, portrait)
        self.val_sampler = DistributedSampler(self.val_set, self.world_size, self.rank, shuffle=False)
        worker_init = (functools.partial(start_loader_worker, os.getpid(), WorkerLogHandlers())
                       if config.num_workers else None)
        workers = {"num_workers": config.num_workers, "collate_fn": collate_detection,
                   "pin_memory": self.device.type == "cuda", "worker_init_fn": worker_init}
        # The loader's own generator (worker seeds only): drawing from the global one at each
        # epoch's start would shift the model's random stream after a mid-epoch resume.
        self.train_loader = DataLoader(self.train_set, batch_sampler=self.train_batches,
                                       generator=torch.Generator().manual_seed(config.seed + self.rank), **workers)
        self.val_loader = DataLoader(self.val_set, config.batch_size, sampler=self.val_sampler, **workers)
        if len(self.train_loader) < config.accumulate_steps:
            raise ValueError(f"the training set has {len(self.train_set)} images: fewer than one step of "
                             f"{config.batch_size} per batch x {config.accumulate_steps} accumulated batches per "
                             f"process x {self.world_size} processes")
        self.preemption = None  # a PreemptionRequest while fit() runs
        self.tensorboard = self._open_tensorboard() if config.tensorboard and self.is_main else None

    # --- state ---------------------------------------------------------------------------------

    def state_dict(self, epoch, step=0):
        """The training state after `epoch` whole epochs and `step` steps of the next one."""
        return {
            "format": TRAIN_CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "ema_model": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_updates": int(self.ema.n_averaged) if self.ema is not None else 0,
            "model_config": self.model.config.to_dict(),
            "train_config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "epoch": epoch,
            "step": step,
            "epoch_totals": dict(self.epoch_totals) if step else {"steps": 0},  # the loss sums of those steps
            "best_ap": self.best_ap,
            "time_budget": self.time_budget.state_dict() if self.time_budget is not None else None,
            "world_size": self.world_size,
            "class_names": {str(label): name for label, name in self.train_set.class_names.items()},
            "rng": distributed.all_gather_objects(rng_state()),  # every rank's generators
        }

    def _load_backbone_weights(self, local_rank):
        """The model's backbone_weights, fetched by one process per machine while the others wait
        and then read the cached file (or, if the fetch failed, fail the same way: none hangs)."""
        first = local_rank == 0
        if self.world_size > 1 and not first:
            torch.distributed.barrier()
        try:
            load_backbone_weights(self.model, progress=self.config.progress and first)
        finally:
            if self.world_size > 1 and first:
                torch.distributed.barrier()

    def _restore(self, checkpoint, path):
        self.model.load_state_dict(checkpoint["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(checkpoint["ema_model"])
            self.ema.n_averaged.fill_(checkpoint["ema_updates"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.grad_scaler is not None and checkpoint["grad_scaler"] is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler"])
        self.start_epoch, self.best_ap = checkpoint["epoch"], checkpoint["best_ap"]
        self.start_step = checkpoint.get("step", 0)
        if self.time_budget is not None:
            if checkpoint.get("time_budget") is not None:
                self.time_budget.load_state_dict(checkpoint["time_budget"])
            elif checkpoint.get("epoch_steps") is not None:  # written before per-epoch plans: one for epochs 1..
                self.time_budget.epoch_steps = [None] + [checkpoint["epoch_steps"]] * (self.config.epochs - 1)
        self.epoch_totals = dict(checkpoint.get("epoch_totals") or {"steps": 0})
        rng = checkpoint["rng"]
        set_rng_state(rng[self.rank] if len(rng) == self.world_size else rng[0])
        # The log keeps what led to this state; records of steps after it are dropped.
        if os.path.exists(self.log_path):
            with open(self.log_path) as f:
                records = [json.loads(line) for line in f if line.strip()]
            # Within start_epoch: its steps before start_step and, if it was under way, its time-budget plan.
            epoch, step = self.start_epoch, self.start_step
            self.log_records = [r for r in records if r["epoch"] < epoch or r["epoch"] == epoch and (
                r["type"] == "train" and r["step"] < step or r["type"] == "budget" and step > 0)]
        if self.is_main:
            atomic_write(self.log_path, lambda f: f.writelines(json.dumps(r) + "\n" for r in self.log_records))
            logger.info("resumed from %s at epoch %d step %d (best AP %s)", path, self.start_epoch, self.start_step,
                        self.best_ap)

    def _start_new_log(self):
        """A new run starts an empty log.jsonl; an earlier run found in output_dir is named in a
        warning (its log goes now, its checkpoints as this run saves its own)."""
        found = [name for name in (RUN_LATEST, LOG) if os.path.exists(os.path.join(self.output_dir, name))]
        if found:
            logger.warning("%s holds an earlier run (%s): this new run replaces its log now and its checkpoints as "
                           "it saves its own (--resume auto would have continued it)", self.output_dir,
                           ", ".join(found))
            atomic_write(self.log_path, lambda f: None)

    def _open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("tensorboard=True but the tensorboard package is not installed (pip install "
                           "'dabdetr[tensorboard]'): no TensorBoard logs, log.jsonl has the same numbers")
            return None
        return SummaryWriter(os.path.join(self.output_dir, "tensorboard"))

    def _log(self, record):
        self.log_records.append(record)
        if self.is_main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            kind = record["type"]
            step = record["global_step"] if kind == "train" else record["epoch"]
            for key, value in record.items():
                if key not in ("type", "epoch", "step", "global_step") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{kind}/{key}", value, step)
            self.tensorboard.flush()

    def save_checkpoint(self, epoch, metrics, step=0):
        state = self.state_dict(epoch, step)  # a collective: every rank takes part
        if not self.is_main:
            return
        atomic_torch_save(state, os.path.join(self.output_dir, RUN_LATEST))
        if step == 0:
            keep_epoch_checkpoint(self.output_dir, epoch, self.config.keep_last)
        if metrics is not None and metrics["AP"] == self.best_ap:
            atomic_torch_save({**state, "metrics": metrics}, os.path.join(self.output_dir, RUN_BEST))

    def stop_if_preempted(self, epoch, step, saved=False):
        """After a whole step (or epoch): if any process got a preemption signal, all save the
        state reached (epoch, step), unless it was just saved, and raise TrainingPreempted together."""
        if self.preemption is None or not self.preemption.agreed():
            return
        if not saved:
            self.save_checkpoint(epoch, None, step=step)
        distributed.barrier()
        raise TrainingPreempted(self.preemption.signal_name(), epoch, step, os.path.join(self.output_dir, RUN_LATEST))

    # --- the loop ------------------------------------------------------------------------------

    def train_epoch(self, epoch, start_step=0):
        """Trains epoch `epoch` from its step start_step (> 0: a mid-epoch resume); returns the
        seconds it took and the steps it ran."""
        config = self.config
        self.train_batches.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        self.train_batches.skip = start_step * config.accumulate_steps
        full_steps = start_step + len(self.train_loader) // config.accumulate_steps
        steps = self.planned_steps(epoch, full_steps)
        remaining = max(0, steps - start_step)
        if start_step == 0:
            self.epoch_totals = {"steps": 0}

        def after_step(step, losses):
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            if step % config.log_every == 0 or step == steps - 1:
                self._log({"type": "train", "epoch": epoch, "step": step, "global_step": epoch * full_steps + step,
                           "lr": self.optimizer.param_groups[0]["lr"], **losses})
            saved = bool(config.checkpoint_every) and (step + 1) % config.checkpoint_every == 0 and step + 1 < steps
            if saved:
                self.save_checkpoint(epoch, None, step=step + 1)
            self.stop_if_preempted(epoch, step + 1, saved)

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        with self.step_context():
            means = train_one_epoch(self.ddp_model, self.criterion, self.train_loader, self.optimizer, self.device,
                                    epoch, config.clip_max_norm, config.amp, self.grad_scaler, after_step,
                                    show_progress=config.progress, start_step=start_step, totals=self.epoch_totals,
                                    accumulate_steps=config.accumulate_steps, max_steps=remaining)
        self.train_batches.skip = 0
        elapsed = time.perf_counter() - start
        images = remaining * config.batch_size * config.accumulate_steps * self.world_size - means["skipped_images"]
        if means["skipped_images"]:
            logger.warning("epoch %d: %d unreadable images skipped", epoch, means["skipped_images"])
        self._log({"type": "epoch", "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "time_s": elapsed,
                   "images_per_s": images / elapsed, "peak_memory_mb": peak_memory_mb(self.device), **means})
        self.scheduler.step()
        logger.info("epoch %d: loss %.4f (ce %.4f, l1 %.4f, giou %.4f), %.0f s", epoch, means["loss"],
                    means["loss_ce"], means["loss_bbox"], means["loss_giou"], elapsed)
        return elapsed, remaining

    def step_context(self):
        """What training steps run within: with compile=True, the model's compiled encode_decode in
        place (training/compilation.py)."""
        return self.compiled.active() if self.compiled is not None else contextlib.nullcontext()

    def planned_steps(self, epoch, full_steps):
        """The steps epoch `epoch` runs: full_steps, or fewer where the time budget needs
        (decided by process 0, the same on every process; a new plan is logged)."""
        if self.time_budget is None:
            return full_steps
        steps, plan = self.time_budget.steps_for(epoch, full_steps)
        if plan is None:
            return steps
        steps = self.time_budget.epoch_steps[epoch] = plan["steps"] = distributed.broadcast_object(steps)
        self._log({"type": "budget", **plan})
        message = ("time budget of %.1f min: %.1f spent; measured %.3f s a step and %.0f s an epoch besides its "
                   "steps, so epoch %d runs %d of its %d steps (about %.1f min in all)")
        log = logger.warning if steps < full_steps else logger.info
        log(message, self.config.time_budget_min, plan["spent_min"], plan["step_s"], plan["overhead_s"], epoch, steps,
            full_steps, plan["projected_min"])
        return steps

    def evaluate(self, epoch):
        model_config = self.model.config
        metrics, results = evaluate(self.eval_model, self.val_loader, self.val_set.coco,
                                    self.val_set.label_to_category_id, self.device, model_config.num_select,
                                    self.config.amp, self.config.progress)
        table = metrics.pop("table")
        self._log({"type": "eval", "epoch": epoch, **metrics})
        if self.tensorboard is not None:
            self._add_detection_picture(epoch)
        if metrics["AP"] is not None and (self.best_ap is None or metrics["AP"] > self.best_ap):
            self.best_ap = metrics["AP"]
        logger.info("epoch %d evaluation (%d images):\n%s", epoch, len(self.val_set), table)
        return metrics, results

    def _add_detection_picture(self, epoch):
        import numpy as np

        from dabdetr.evaluation.plots import detection_grid

        grid = detection_grid(self.eval_model, self.val_set, self.device)
        if grid is not None:
            self.tensorboard.add_image("eval/detections", np.asarray(grid), epoch, dataformats="HWC")

    def fit(self):
        """Trains the remaining epochs; returns the last evaluation's metrics. On SIGTERM or SIGUSR1
        it stops after the current step (or evaluation) with the state saved, raising
        TrainingPreempted (dabdetr.training.preemption)."""
        with PreemptionRequest() as self.preemption:
            try:
                return self._fit()
            finally:
                self.preemption = None
                if self.tensorboard is not None:
                    self.tensorboard.close()

    def _fit(self):
        from dabdetr.evaluation.plots import plot_training_curves  # matplotlib loads only when training

        config, metrics, curves_time = self.config, None, time.monotonic()
        if self.is_main:
            logger.info("training %s on %s for epochs %d..%d on %s x%d; output in %s", config.preset,
                        config.data_root or "synthetic shapes", self.start_epoch, config.epochs - 1, self.device,
                        self.world_size, self.output_dir)
        if self.time_budget is not None:
            self.time_budget.start()
        for epoch in range(self.start_epoch, config.epochs):
            epoch_time_s, epoch_steps = self.train_epoch(epoch, self.start_step if epoch == self.start_epoch else 0)
            trained = time.monotonic()
            metrics = None
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                metrics, _ = self.evaluate(epoch)
            # After each evaluation, and otherwise at most every CURVES_INTERVAL_S (a plot costs
            # about 0.3 s: much of a short epoch).
            if self.is_main and (metrics is not None or time.monotonic() - curves_time >= CURVES_INTERVAL_S):
                plot_training_curves(self.log_records, os.path.join(self.output_dir, "curves.png"))
                curves_time = time.monotonic()
            if self.time_budget is not None:
                self.time_budget.record_training(epoch_time_s, epoch_steps)
                self.time_budget.record_overhead(time.monotonic() - trained)
            saved = (epoch + 1) % config.checkpoint_epochs == 0 or metrics is not None or epoch + 1 == config.epochs
            if saved:
                self.save_checkpoint(epoch + 1, metrics)
            if epoch + 1 < config.epochs:
                self.stop_if_preempted(epoch + 1, 0, saved)
        if metrics is None:  # resumed a finished run: evaluate its final model
            metrics, _ = self.evaluate(config.epochs - 1)
        if self.is_main:
            self.write_outputs(metrics)
        distributed.barrier()
        return metrics

    def write_outputs(self, metrics):
        """metrics.json, detections.png and model/ at the end of training."""
        from dabdetr.evaluation.plots import plot_category_ap, save_detection_grid

        self.eval_model.save_pretrained(os.path.join(self.output_dir, RUN_MODEL_DIR), self.train_set.class_names,
                                        self.config.eval_size, self.config.max_size)
        summary = {**metrics, "epochs": self.config.epochs,
                   "epoch_steps": self.time_budget.epoch_steps if self.time_budget is not None else None,
                   "preset": self.config.preset,
                   "dataset": self.config.data_root or "synthetic", "val_images": len(self.val_set),
                   "train_time_s": sum(r["time_s"] for r in self.log_records if r["type"] == "epoch"),
                   "device": str(self.device), "world_size": self.world_size}
        atomic_write(os.path.join(self.output_dir, "metrics.json"), lambda f: json.dump(summary, f, indent=1))
        save_detection_grid(self.eval_model, self.val_set, self.device, os.path.join(self.output_dir, "detections.png"))
        logger.info("AP of each category (metrics.json: classes):\n%s", per_category_table(metrics["classes"]))
        plot_category_ap(metrics["classes"], os.path.join(self.output_dir, "category_ap.png"))
        logger.info("wrote %s/{metrics.json, curves.png, category_ap.png, detections.png, model/}", self.output_dir)
