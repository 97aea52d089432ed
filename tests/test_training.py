"""The trainer: learning, exact resume after an interruption, non-finite losses, torchrun DDP,
checkpoint kinds, and the CLI end to end (tiny models on the synthetic set)."""

import json
import logging
import math
import os
import re
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools", reason="COCO loading and COCOeval need pycocotools (not on the GPU "
                                         "machines unless its wheel is carried)")

from coco_fixture import CATEGORY_IDS, write_coco_folder

import dabdetr
from dabdetr import from_pretrained
from dabdetr.cli import main as cli
from dabdetr.data import CocoDetection, SyntheticShapes, collate_detection, make_transforms
from dabdetr.models import DABDETR
from dabdetr.models.config import preset
from dabdetr.training.checkpoint import load_train_checkpoint
from dabdetr.training.config import TrainConfig, recipe
from dabdetr.training.criterion import SetCriterion
from dabdetr.training.engine import NonFiniteLossError
from dabdetr.training.matcher import HungarianMatcher
from dabdetr.training.trainer import Trainer

TINY_MODEL = {"hidden_dim": 64, "ffn_dim": 128, "num_encoder_layers": 2, "num_decoder_layers": 2, "num_queries": 10,
              "num_heads": 4}
TINY_RUN = {"synthetic_train_images": 8, "synthetic_val_images": 4, "synthetic_image_size": 64,
            "train_sizes": (64,), "max_size": 64, "eval_size": 64, "batch_size": 4, "num_workers": 0,
            "log_every": 1, "progress": False, "epochs": 2, "lr_drop": 1, "model": TINY_MODEL}


# The two architectures' demo presets (DAB-DETR's, DAB-Deformable-DETR's), for the tests that run both.
PRESETS = ("demo", "demo_deformable")


def tiny_config(output_dir, preset="demo", **overrides):
    return recipe(preset, output_dir=str(output_dir), **{**TINY_RUN, **overrides})


def log_records(output_dir):
    """The records of output_dir/log.jsonl (a line still being written is left out)."""
    with open(os.path.join(output_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def step_losses(output_dir, epoch):
    return [r["loss"] for r in log_records(output_dir) if r["type"] == "train" and r["epoch"] == epoch]


def epoch_mean_losses(output_dir):
    return [r["loss"] for r in log_records(output_dir) if r["type"] == "epoch"]


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = DABDETR(preset("demo", num_classes=4, **TINY_MODEL))
    dataset = SyntheticShapes(4, make_transforms(False, [64], 64), image_size=64)
    images, mask, targets = collate_detection([dataset[i] for i in range(4)])
    criterion = SetCriterion(4, HungarianMatcher())
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    losses = []
    for _ in range(20):
        loss = criterion(model(images, mask), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses  # overfitting one batch: a steady fall


def fit_until_killed(trainer, monkeypatch, criterion_call):
    """trainer.fit(), killed (KeyboardInterrupt) at the criterion's criterion_call-th call (1-based)."""
    original_forward, calls = SetCriterion.forward, {"n": 0}

    def crash_at_that_call(self, outputs, targets, num_boxes=None):
        calls["n"] += 1
        if calls["n"] == criterion_call:
            raise KeyboardInterrupt("simulated crash")
        return original_forward(self, outputs, targets, num_boxes)

    monkeypatch.setattr(SetCriterion, "forward", crash_at_that_call)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.setattr(SetCriterion, "forward", original_forward)


@pytest.mark.parametrize("preset", PRESETS)
def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch, preset):
    Trainer(tiny_config(tmp_path / "straight", preset)).fit()

    # Same run, killed in the middle of epoch 1 (2 steps per epoch: at the first step of epoch 1).
    fit_until_killed(Trainer(tiny_config(tmp_path / "cut", preset)), monkeypatch, 3)
    checkpoint = load_train_checkpoint(str(tmp_path / "cut" / "checkpoint.pt"))
    assert checkpoint["epoch"] == 1 and checkpoint["scheduler"]["last_epoch"] == 1

    Trainer.from_checkpoint(str(tmp_path / "cut" / "checkpoint.pt")).fit()
    assert step_losses(tmp_path / "straight", 0) == step_losses(tmp_path / "cut", 0)
    assert len(step_losses(tmp_path / "straight", 1)) == 2
    assert step_losses(tmp_path / "straight", 1) == step_losses(tmp_path / "cut", 1)
    straight = load_train_checkpoint(str(tmp_path / "straight" / "checkpoint.pt"))["model"]
    resumed = load_train_checkpoint(str(tmp_path / "cut" / "checkpoint.pt"))["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    for name in ("metrics.json", "curves.png", "detections.png", "best.pt", "model/config.json"):
        assert os.path.exists(tmp_path / "cut" / name), name


def test_mid_epoch_checkpoint_resumes_exactly(tmp_path, monkeypatch):
    # 3 steps per epoch; checkpoints every 2 steps; the run dies at the last step of epoch 1,
    # after the checkpoint of its step 2, and resumes from there (the straight run writes only
    # per-epoch checkpoints, so writing them changes nothing either). With a weight average, which
    # must resume too.
    run = {"synthetic_train_images": 12, "epochs": 2, "ema_decay": 0.9}
    Trainer(tiny_config(tmp_path / "straight", **run)).fit()
    fit_until_killed(Trainer(tiny_config(tmp_path / "cut", checkpoint_every=2, **run)), monkeypatch, 6)
    checkpoint = load_train_checkpoint(str(tmp_path / "cut" / "checkpoint.pt"))
    assert (checkpoint["epoch"], checkpoint["step"], checkpoint["epoch_totals"]["steps"]) == (1, 2, 2)

    Trainer.from_checkpoint(str(tmp_path / "cut" / "checkpoint.pt")).fit()
    for epoch in (0, 1):
        assert len(step_losses(tmp_path / "straight", epoch)) == 3
        assert step_losses(tmp_path / "straight", epoch) == step_losses(tmp_path / "cut", epoch)
    straight, resumed = (load_train_checkpoint(str(tmp_path / name / "checkpoint.pt")) for name in ("straight", "cut"))
    for key in ("model", "ema_model"):
        assert all(torch.equal(straight[key][k], resumed[key][k]) for k in straight[key]), key
    assert straight["ema_updates"] == resumed["ema_updates"] == 6
    assert [r for r in log_records(tmp_path / "straight") if r["type"] == "eval"] == [
        r for r in log_records(tmp_path / "cut") if r["type"] == "eval"]

    straight_means, cut_means = (epoch_mean_losses(tmp_path / name) for name in ("straight", "cut"))
    assert len(straight_means) == 2 and straight_means == cut_means  # the means span the resume


def test_ema_weights_average_the_steps_and_are_what_is_evaluated_and_served(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, epochs=1, eval_every=1, ema_decay=0.7))
    after_steps = []
    trainer.optimizer.register_step_post_hook(
        lambda *_: after_steps.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}))
    trainer.fit()
    assert len(after_steps) == 2  # 8 images, batch 4
    # The first update copies the weights; each later one moves 30% of the way to them.
    expected = {k: 0.7 * after_steps[0][k] + 0.3 * after_steps[1][k] for k in after_steps[0]
                if after_steps[0][k].is_floating_point()}
    averaged = trainer.ema.module.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(averaged[k], v, rtol=1e-6, atol=1e-7, msg=k)
    assert any(not torch.equal(after_steps[0][k], after_steps[1][k]) for k in expected)
    # best.pt and model/ hold the average: what the logged evaluation measured.
    served = from_pretrained(str(tmp_path / "best.pt")).state_dict()
    exported = from_pretrained(str(tmp_path / "model")).state_dict()
    for k, v in averaged.items():
        assert torch.equal(served[k], v) and torch.equal(exported[k], v), k


def test_ema_decay_outside_its_range_is_refused(tmp_path):
    for decay in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
            tiny_config(tmp_path, ema_decay=decay)


def test_cosine_schedule_follows_half_a_cosine_over_the_epochs(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, epochs=4, eval_every=4, lr_schedule="cosine", lr=1e-3,
                                  lr_backbone=2e-4))
    seen = []
    trainer.optimizer.register_step_post_hook(
        lambda optimizer, *_: seen.append([group["lr"] for group in optimizer.param_groups]))
    trainer.fit()
    assert len(seen) == 8  # 2 steps per epoch
    for step, lrs in enumerate(seen):
        factor = (1 + math.cos(math.pi * (step // 2) / 4)) / 2
        assert lrs == pytest.approx([1e-3 * factor, 2e-4 * factor], rel=1e-9), step
    with pytest.raises(ValueError, match="epochs cannot change.*cosine lr schedule spans its 4 epochs"):
        Trainer.from_checkpoint(str(tmp_path / "checkpoint.pt"), epochs=6)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        tiny_config(tmp_path, lr_schedule="linear")


def test_configs_of_earlier_versions_with_retired_settings_load(caplog):
    # channels_last was a training option until the backbone took the layout over; checkpoints keep it.
    saved = recipe("demo").to_dict()
    with caplog.at_level(logging.INFO, logger="dabdetr.training.config"):
        loaded = TrainConfig.from_dict({**saved, "channels_last": True})
    assert loaded == recipe("demo") and "ignoring the training setting channels_last=True" in caplog.text
    with pytest.raises(ValueError, match="unknown TrainConfig field channel_last"):
        TrainConfig.from_dict({**saved, "channel_last": True})


def test_non_finite_loss_stops_training_naming_the_step(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, epochs=1))
    original_forward, calls = DABDETR.forward, {"n": 0}

    def nan_at_second_step(self, images, mask, targets=None):
        calls["n"] += 1
        outputs = original_forward(self, images, mask, targets)
        if calls["n"] == 2:
            outputs["pred_logits"] = outputs["pred_logits"] * float("nan")
        return outputs

    monkeypatch.setattr(DABDETR, "forward", nan_at_second_step)
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* at epoch 0, step 1"):
        trainer.fit()
    assert step_losses(tmp_path, 0) and len(step_losses(tmp_path, 0)) == 1  # step 0 ran and was logged


def test_resume_rejects_checkpoints_of_another_kind(tmp_path):
    weights = tmp_path / "weights.pth"
    torch.save({"model": {}}, weights)
    with pytest.raises(ValueError, match="not a dabdetr training checkpoint"):
        Trainer.from_checkpoint(str(weights))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="corrupt.pt: cannot be read with torch.load"):
        Trainer.from_checkpoint(str(corrupt))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("preset", PRESETS)
def test_two_process_ddp_keeps_ranks_identical(tmp_path, preset):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(free_port()), script, str(tmp_path),
                             preset],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(tmp_path / "ddp_result.json") as f:
        report = json.load(f)
    assert report["world_size"] == 2 and report["steps"] >= 2
    assert report["max_parameter_difference"] == 0.0
    assert report["parameters_changed"]
    assert report["ranks_draw_differently"]  # dropout masks and denoising noise differ per rank


def test_two_process_eval_equals_one_process(tmp_path):
    """`torchrun -m dabdetr.cli eval`: each process evaluates its share (5 images over 2: the
    sampler repeats one, which must count once) and the first writes the results of all: the
    detections and AP of one process."""
    annotations, images = write_coco_folder(str(tmp_path / "coco"), count=5)
    model = DABDETR(preset("demo", num_classes=91, **TINY_MODEL))
    with torch.no_grad():  # random weights, but scores that favour the set's own ids
        model.class_embed.bias[sorted(CATEGORY_IDS.values())] += 3.0
    model.save_pretrained(str(tmp_path / "model"))
    args = ["eval", str(tmp_path / "model"), "--annotations", annotations, "--images", images, "--eval-size", "64",
            "--max-size", "64", "--batch-size", "1", "--num-workers", "0"]
    cli([*args, "--output", str(tmp_path / "one.json"), "--metrics", str(tmp_path / "one_metrics.json")])
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                             "127.0.0.1", "--master_port", str(free_port()), "-m", "dabdetr.cli", *args,
                             "--output", str(tmp_path / "two.json"), "--metrics", str(tmp_path / "two_metrics.json")],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all") == 1  # the first process
    assert "on 5 images by 2 processes written to" in result.stdout
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    assert len(one) == len(two) and {d["image_id"] for d in one} == {d["image_id"] for d in two} and len(one) > 0
    for image_id in {d["image_id"] for d in one}:  # sorted scores: a near tie may swap places
        scores = [torch.tensor(sorted(d["score"] for d in found if d["image_id"] == image_id)) for found in (one, two)]
        torch.testing.assert_close(scores[1], scores[0], rtol=0, atol=1e-4)
    metrics = [json.loads((tmp_path / f"{name}_metrics.json").read_text()) for name in ("one", "two")]
    for key in ("AP", "AP50", "AP75"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], abs=1e-3)


def test_cli_deformable_train_eval_predict_convert(tmp_path, capsys):
    """Every command on DAB-Deformable-DETR: trained (bf16 autocast, two accumulated micro-batches
    a step), resumed, evaluated, run on an image (the CLI, detect), converted to the official
    format and back."""
    run = tmp_path / "run"
    settings = [f"--set={k}={json.dumps(v)}" for k, v in TINY_RUN.items() if k not in ("model", "progress")]
    model = {**TINY_MODEL, "backbone_norm": "frozen_bn", "backbone_frozen_stages": 0}
    cli(["train", "--preset", "demo_deformable", "--output-dir", str(run), "--no-progress", "--epochs", "1",
         "--amp", "bf16", "--set=accumulate_steps=2", "--set=batch_size=2", "--set=allow_random_backbone=true",
         *settings, *[f"--model={k}={v}" for k, v in model.items()]])
    cli(["train", "--resume", str(run / "checkpoint.pt"), "--epochs", "2", "--no-progress"])
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    assert from_pretrained(str(run / "model")).config.architecture == "dab_deformable_detr"

    cli(["eval", str(run / "checkpoint.pt"), "--output", str(tmp_path / "detections.json"), "--num-workers", "0",
         "--metrics", str(tmp_path / "eval_metrics.json")])
    assert "Average Precision" in capsys.readouterr().out
    assert 0 <= json.loads((tmp_path / "eval_metrics.json").read_text())["AP"] <= 1
    assert json.loads((tmp_path / "detections.json").read_text())

    dataset = SyntheticShapes(2, make_transforms(False, [64], 64), image_size=64)
    image_path = tmp_path / "shapes.png"
    dataset.load_image(dataset.coco.imgs[1]).save(image_path)
    cli(["predict", str(run / "model"), str(image_path), "--output-dir", str(tmp_path / "predicted"),
         "--score-threshold", "0", "--save-images", "--num-workers", "0"])
    predictions = json.loads((tmp_path / "predicted" / "detections.json").read_text())
    assert predictions and {p["category_id"] for p in predictions} <= {0, 1, 2, 3}
    assert (tmp_path / "predicted" / "shapes.png").exists()
    found = dabdetr.detect(str(run / "model"), str(image_path), 0.0)
    assert len(found["boxes"]) == len(predictions)

    official = tmp_path / "official.pth"
    cli(["convert", str(run / "checkpoint.pt"), str(official), "--to", "official"])
    original = from_pretrained(str(run / "model"))
    converted = from_pretrained(str(official), backbone_frozen_stages=0)  # what the weights cannot tell
    assert converted.config.architecture == "dab_deformable_detr"
    assert all(torch.equal(v, converted.state_dict()[k]) for k, v in original.state_dict().items())
    images, mask = torch.rand(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        for got, want in zip(converted.predict(images, mask), original.predict(images, mask)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_cli_train_eval_predict_convert(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    settings = [f"--set={k}={json.dumps(v)}" for k, v in TINY_RUN.items() if k not in ("model", "progress")]
    # The anchors at the published temperature, so that the model can be written in the other formats;
    # a feature-map temperature no tensor shows, which the official format's args must carry.
    model = {**TINY_MODEL, "anchor_temperature": 10000.0, "pe_temperature_h": 10.0}
    cli(["train", "--preset", "demo", "--output-dir", str(run), "--no-progress", "--epochs", "1",
         *settings, *[f"--model={k}={v}" for k, v in model.items()]])
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(metrics) and 0 <= metrics["AP"] <= 1
    assert metrics["classes"] and set(metrics["classes"]) <= {"ellipse", "rectangle", "triangle", "cross"}

    # The run's settings as a file, and a new run from it with two changes (a whole run compiled:
    # steps, evaluation, the model written).
    settings_file = json.loads((run / "config.json").read_text())
    expected = recipe("demo", **{**TINY_RUN, "epochs": 1, "model": model}).to_dict()
    assert settings_file == json.loads(json.dumps({k: v for k, v in expected.items() if k != "output_dir"}))
    cli(["train", "--config", str(run / "config.json"), "--seed", "5", "--compile", "--output-dir",
         str(tmp_path / "again")])
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == {**settings_file, "seed": 5, "compile": True}
    assert from_pretrained(str(tmp_path / "again" / "model")).config.anchor_temperature == 10000.0
    with pytest.raises(SystemExit, match="--config starts a run from its settings"):
        cli(["train", "--config", str(run / "config.json"), "--resume", "auto"])
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(SystemExit, match="list.json must hold a JSON object of TrainConfig fields, not a list"):
        cli(["train", "--config", str(tmp_path / "list.json")])

    with pytest.raises(SystemExit, match="cannot change when resuming"):
        cli(["train", "--resume", str(run / "checkpoint.pt"), "--lr", "1"])
    cli(["train", "--resume", str(run / "checkpoint.pt"), "--epochs", "2", "--no-progress"])  # one epoch more
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    assert load_train_checkpoint(str(run / "checkpoint.pt"))["epoch"] == 2

    kept = []  # eval and predict on the CPU keep freed memory, as training does (tests/test_host_memory.py)
    monkeypatch.setattr(dabdetr.host_memory, "keep_freed_memory", lambda: kept.append("eval or predict"))
    cli(["eval", str(run / "checkpoint.pt"), "--output", str(tmp_path / "detections.json"), "--num-workers", "0",
         "--metrics", str(tmp_path / "eval_metrics.json")])
    assert len(kept) == 1
    printed = capsys.readouterr().out
    assert "Average Precision" in printed
    evaluated = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert evaluated["AP"] == json.loads(printed.splitlines()[-2])["AP"]  # the line before the file count
    assert set(evaluated["classes"]) <= {"ellipse", "rectangle", "triangle", "cross"} and evaluated["classes"]
    for name, value in evaluated["classes"].items():  # the printed table shows the same numbers
        assert f"{name:<20} {value['AP']:6.3f} {value['AP50']:6.3f}" in printed
    detections = json.loads((tmp_path / "detections.json").read_text())
    assert detections and {"image_id", "category_id", "bbox", "score"} <= set(detections[0])

    dataset = SyntheticShapes(2, make_transforms(False, [64], 64), image_size=64)
    image_path = tmp_path / "shapes.png"
    dataset.load_image(dataset.coco.imgs[1]).save(image_path)
    cli(["predict", str(run / "model"), str(image_path), "--output-dir", str(tmp_path / "predicted"),
         "--size", "64", "--max-size", "64", "--score-threshold", "0", "--save-images", "--num-workers", "0"])
    assert len(kept) == 2
    predictions = json.loads((tmp_path / "predicted" / "detections.json").read_text())
    images = json.loads((tmp_path / "predicted" / "images.json").read_text())
    assert images == [{"id": 0, "file_name": str(image_path), "height": 64, "width": 64}]
    assert predictions and {p["image_id"] for p in predictions} == {0}
    assert {p["category_id"] for p in predictions} <= {0, 1, 2, 3}  # the four shapes' class indices
    assert (tmp_path / "predicted" / "shapes.png").exists()
    cli(["predict", str(run / "model"), str(image_path), "--output-dir", str(tmp_path / "bf16"), "--size", "64",
         "--max-size", "64", "--score-threshold", "0", "--num-workers", "0", "--amp", "bf16",
         "--no-keep-freed-memory"])
    assert len(kept) == 2  # the switch for a machine tight on memory
    in_bf16 = json.loads((tmp_path / "bf16" / "detections.json").read_text())
    scores = [torch.tensor(sorted(p["score"] for p in found)) for found in (predictions, in_bf16)]
    assert len(scores[0]) == len(scores[1]) and not torch.equal(*scores)
    torch.testing.assert_close(scores[1], scores[0], rtol=0, atol=0.02)
    # The model directory keeps the size the run evaluated at, so prediction needs no --size (the
    # default, COCO's 800, is far from what a 64-pixel model saw), and neither does a copy of it.
    assert json.loads((run / "model" / "config.json").read_text())["eval_size"] == TINY_RUN["eval_size"]
    cli(["convert", str(run / "model"), str(tmp_path / "copy"), "--to", "dabdetr"])
    by_hand = dabdetr.detect(from_pretrained(str(run / "model")), str(image_path), 0.0, size=64, max_size=64)
    for source in (run / "model", tmp_path / "copy", run / "checkpoint.pt"):
        torch.testing.assert_close(dabdetr.detect(str(source), str(image_path), 0.0)["boxes"], by_hand["boxes"])
    assert not torch.allclose(dabdetr.detect(from_pretrained(str(run / "model")), str(image_path), 0.0)["boxes"],
                              by_hand["boxes"])

    official = tmp_path / "not" / "yet" / "official.pth"  # folders that do not exist are made
    cli(["convert", str(run / "checkpoint.pt"), str(official), "--to", "official"])
    # What the weights cannot tell comes as overrides, as for any official checkpoint.
    original = from_pretrained(str(run / "model"))
    converted = from_pretrained(str(official), backbone_norm="batch_norm", backbone_frozen_stages=0,
                                backbone_stage=3, dn_groups=3)
    assert all(torch.equal(v, converted.state_dict()[k]) for k, v in original.state_dict().items())
    for field in ("pe_temperature_h", "pe_temperature_w", "num_heads", "num_select", "random_refpoints_xy"):
        assert getattr(converted.config, field) == getattr(original.config, field), field  # from the file's args

    pytest.importorskip("safetensors")
    cli(["convert", str(run / "checkpoint.pt"), str(tmp_path / "hf"), "--to", "huggingface"])
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert sorted(hf_config["id2label"].values()) == ["cross", "ellipse", "rectangle", "triangle"]
    # Hugging Face's eps differ from ours (docs/checkpoints.md, pitfall 1); with ours, the same detector.
    from_hf = from_pretrained(str(tmp_path / "hf"), anchor_update_eps=1e-3, box_head_eps=1e-3)
    images, mask = torch.rand(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.bool)
    with torch.no_grad():
        expected, out = original(images, mask), from_hf(images, mask)
    torch.testing.assert_close(out["pred_logits"], expected["pred_logits"])
    torch.testing.assert_close(out["pred_boxes"], expected["pred_boxes"])


def test_cli_eval_of_a_pretrained_directory_on_a_coco_json(coco_folder, tmp_path, capsys):
    annotations, images = coco_folder
    with open(annotations) as f:
        coco_ids = {c["id"] for c in json.load(f)["categories"]}
    model = DABDETR(preset("demo", num_classes=91, **TINY_MODEL))
    with torch.no_grad():  # random weights, but scores that favour the set's own ids: some detections to map
        model.class_embed.bias[sorted(coco_ids)] += 3.0
    model.save_pretrained(str(tmp_path / "model"))
    cli(["eval", str(tmp_path / "model"), "--annotations", annotations,
         "--images", images, "--eval-size", "128", "--max-size", "200",
         "--num-workers", "0", "--output", str(tmp_path / "detections.json")])
    assert "Average Precision" in capsys.readouterr().out
    detections = json.loads((tmp_path / "detections.json").read_text())
    assert detections and {d["category_id"] for d in detections} <= coco_ids  # logits 0 and unused ids dropped
    # In bfloat16 autocast: the same images and number of detections, scores within a 16-bit rounding.
    cli(["eval", str(tmp_path / "model"), "--annotations", annotations, "--images", images, "--eval-size", "128",
         "--max-size", "200", "--num-workers", "0", "--amp", "bf16", "--output", str(tmp_path / "bf16.json")])
    in_bf16 = json.loads((tmp_path / "bf16.json").read_text())
    for image_id in {d["image_id"] for d in detections}:
        scores = [sorted(d["score"] for d in found if d["image_id"] == image_id) for found in (detections, in_bf16)]
        assert len(scores[0]) == len(scores[1]) and scores[0] != scores[1]
        torch.testing.assert_close(torch.tensor(scores[1]), torch.tensor(scores[0]), rtol=0, atol=0.02)


def test_cli_errors_are_clear(tmp_path, caplog, monkeypatch):
    with pytest.raises(SystemExit):
        cli(["eval", str(tmp_path / "nowhere.pt"), "--annotations", "x.json", "--images", "."])
    assert f"dabdetr eval: no file or directory at {tmp_path / 'nowhere.pt'}" in caplog.text
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(image)
    with pytest.raises(SystemExit):
        cli(["predict", str(tmp_path / "nowhere.pt"), str(image)])
    assert f"dabdetr predict: no file or directory at {tmp_path / 'nowhere.pt'}" in caplog.text
    with pytest.raises(FileNotFoundError, match="no file or directory at"):  # --debug: the exception itself
        cli(["--debug", "predict", str(tmp_path / "nowhere.pt"), str(image)])
    model_dir = tmp_path / "model"
    DABDETR(preset("demo", num_classes=4, **TINY_MODEL)).save_pretrained(str(model_dir))
    with pytest.raises(SystemExit):
        cli(["predict", str(model_dir), str(tmp_path / "missing.png"), "--output-dir", str(tmp_path / "out")])
    assert f"image file not found: {tmp_path / 'missing.png'}" in caplog.text
    with pytest.raises(SystemExit):  # a score above 1 would keep nothing, silently
        cli(["predict", str(model_dir), str(image), "--score-threshold", "2", "--output-dir", str(tmp_path / "out")])
    assert "score_threshold must be in [0, 1] (scores are probabilities), got 2.0" in caplog.text
    with pytest.raises(SystemExit):  # 0 read as "the default" before
        cli(["predict", str(model_dir), str(image), "--size", "0", "--output-dir", str(tmp_path / "out")])
    assert "size must be a positive number of pixels (None: the default), got 0" in caplog.text
    with pytest.raises(SystemExit, match="expected key=value"):
        cli(["train", "--set", "epochs"])

    def press_ctrl_c(trainer):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(SystemExit) as interrupted:  # one line, no traceback
        patch.setattr(Trainer, "fit", press_ctrl_c)
        cli(cli_train_args(tmp_path / "interrupted", TINY_RUN))
    assert interrupted.value.code == 130
    assert "dabdetr train: interrupted; the same command with --resume auto continues" in caplog.text
    with pytest.raises(SystemExit, match="--timm-backbone applies to --to huggingface only"):
        cli(["convert", str(tmp_path / "nowhere.pt"), str(tmp_path / "out.pth"), "--to", "official", "--timm-backbone"])
    with pytest.raises(SystemExit):  # the demo preset's anchor temperature, 20, has no place there
        cli(["convert", str(model_dir), str(tmp_path / "out.pth"), "--to", "official"])
    assert "fixes the anchors' temperature at 10000" in caplog.text and not (tmp_path / "out.pth").exists()


# --- preemption, resume auto, checkpoint files --------------------------------------------------

# With a loader worker: a stopped run must also stop its workers (they ignore the signal).
PREEMPT_RUN = {**TINY_RUN, "synthetic_train_images": 32, "synthetic_image_size": 96, "train_sizes": (96,),
               "max_size": 96, "eval_size": 96, "epochs": 3, "lr_drop": 2, "num_workers": 1}


def cli_train_args(output_dir, run=PREEMPT_RUN):
    settings = [f"--set={k}={json.dumps(v)}" for k, v in run.items() if k not in ("model", "progress")]
    return ["train", "--preset", "demo", "--output-dir", str(output_dir), "--no-progress", *settings,
            *[f"--model={k}={v}" for k, v in TINY_MODEL.items()]]


def send_signals_when(process, output_dir, ready, signals):
    """Sends each of `signals` (10 ms apart) once ready(log records) holds; returns the exit code."""
    import signal
    import time

    deadline = time.monotonic() + 240
    while not (os.path.exists(os.path.join(output_dir, "log.jsonl")) and ready(log_records(output_dir))):
        assert process.poll() is None, "the run ended before it could be signalled"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for signum in signals:
        process.send_signal(getattr(signal, signum))
        time.sleep(0.01)
    return process.wait(timeout=240)


def in_epoch_1(records):
    return any(r["type"] == "train" and r["epoch"] == 1 for r in records)


def assert_same_run(straight, resumed):
    for epoch in range(PREEMPT_RUN["epochs"]):
        assert step_losses(straight, epoch) == step_losses(resumed, epoch), epoch
    a = load_train_checkpoint(str(straight / "checkpoint.pt"))["model"]
    b = load_train_checkpoint(str(resumed / "checkpoint.pt"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_stops_with_a_checkpoint_and_resume_auto_continues_exactly(tmp_path):
    from dabdetr.training.preemption import EXIT_CODE

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both runs alike: results depend on the thread count
    straight = subprocess.run([sys.executable, "-m", "dabdetr", *cli_train_args(tmp_path / "straight")], env=env,
                              capture_output=True, text=True, timeout=240)
    assert straight.returncode == 0, straight.stderr[-3000:]
    run = tmp_path / "cut"
    command = [sys.executable, "-m", "dabdetr", *cli_train_args(run)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Twice: the second arrives while the first is being handled or the checkpoint written.
    code = send_signals_when(process, run, in_epoch_1, ["SIGTERM", "SIGTERM"])
    output = process.stdout.read()
    assert code == EXIT_CODE, output[-3000:]
    assert "preempted: stopped by SIGTERM at epoch 1 step" in output and "--resume auto" in output
    saved = load_train_checkpoint(str(run / "checkpoint.pt"))
    assert saved["epoch"] == 1 and 0 < saved["step"] <= 8
    assert not (run / "metrics.json").exists()

    resumed = subprocess.run(command + ["--resume", "auto"], env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming from {run / 'checkpoint.pt'}" in resumed.stderr
    assert_same_run(tmp_path / "straight", run)


# A loader whose worker ignores preemption signals (from another process: the test) and whose
# fifth sample is corrupt; the error leaves uncaught, so its traceback keeps the loader alive
# when Python exits and terminates the worker.
LOADER_WORKER_SCRIPT = """
import functools, os, sys, torch
from dabdetr.training.preemption import ignore_preemption_signals

class Samples(torch.utils.data.Dataset):
    def __len__(self):
        return 6
    def __getitem__(self, index):
        if index == 4:
            raise ValueError("sample 4 is corrupt")
        return os.getpid()

loader = torch.utils.data.DataLoader(Samples(), batch_size=1, num_workers=1,
                                     worker_init_fn=functools.partial(ignore_preemption_signals, os.getpid()))
batches = iter(loader)
print(int(next(batches)), flush=True)
sys.stdin.readline()
for batch in batches:
    print(int(batch), flush=True)
"""


def test_loader_workers_outlive_preemption_signals_but_not_the_exit_of_their_process():
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-c", LOADER_WORKER_SCRIPT], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        worker = int(process.stdout.readline())
        os.kill(worker, signal.SIGTERM)  # as a scheduler signals every process of a job
        os.kill(worker, signal.SIGUSR1)
        time.sleep(0.5)
        process.stdin.write("go on\n")
        process.stdin.flush()
        stdout, stderr = process.communicate(timeout=60)  # ignoring the exit's SIGTERM too would hang here
    finally:
        process.kill()
    # Samples 1 to 3 came from the signalled worker, and so did the error of sample 4.
    assert stdout.split() == [str(worker)] * 3, stdout + stderr
    assert process.returncode == 1 and stderr.rstrip().endswith("ValueError: sample 4 is corrupt"), stderr
    assert "killed by signal" not in stderr and "exited unexpectedly" not in stderr, stderr


def test_checkpoint_epochs_saves_every_nth_and_evaluated_epochs_and_a_preempted_one(tmp_path, monkeypatch):
    import signal

    from dabdetr.training.preemption import TrainingPreempted

    Trainer(tiny_config(tmp_path / "run", epochs=4, checkpoint_epochs=3, eval_every=2, keep_last=5)).fit()
    assert sorted(f for f in os.listdir(tmp_path / "run") if f.startswith("checkpoint_epoch")) == [
        "checkpoint_epoch0002.pt", "checkpoint_epoch0003.pt", "checkpoint_epoch0004.pt"]

    trainer = Trainer(tiny_config(tmp_path / "cut", epochs=3, checkpoint_epochs=3, eval_every=3))
    original_train_epoch = Trainer.train_epoch

    def signalled_at_the_epoch_end(self, epoch, start_step=0):
        took = original_train_epoch(self, epoch, start_step)
        os.kill(os.getpid(), signal.SIGUSR1)
        return took

    monkeypatch.setattr(Trainer, "train_epoch", signalled_at_the_epoch_end)
    with pytest.raises(TrainingPreempted, match="SIGUSR1 at epoch 1 step 0"):
        trainer.fit()
    checkpoint = load_train_checkpoint(str(tmp_path / "cut" / "checkpoint.pt"))
    assert (checkpoint["epoch"], checkpoint["step"]) == (1, 0)  # saved by the signal: epoch 1 is not a 3rd


def test_a_new_run_in_an_earlier_runs_directory_says_so_and_logs_only_itself(tmp_path, caplog):
    Trainer(tiny_config(tmp_path, epochs=1)).fit()
    first = log_records(tmp_path)
    Trainer(tiny_config(tmp_path, epochs=1, seed=7)).fit()
    assert f"{tmp_path} holds an earlier run (checkpoint.pt, log.jsonl)" in caplog.text
    second = log_records(tmp_path)
    assert [r["type"] for r in second] == [r["type"] for r in first]  # not both runs' records
    assert second != first


def test_sigusr1_between_epochs_stops_at_the_epoch_checkpoint(tmp_path, monkeypatch):
    import signal

    from dabdetr.training.preemption import TrainingPreempted

    trainer = Trainer(tiny_config(tmp_path, epochs=3))
    original_evaluate = Trainer.evaluate

    def signalled_during_evaluation(self, epoch):
        os.kill(os.getpid(), signal.SIGUSR1)
        return original_evaluate(self, epoch)

    monkeypatch.setattr(Trainer, "evaluate", signalled_during_evaluation)
    with pytest.raises(TrainingPreempted, match="SIGUSR1 at epoch 1 step 0"):
        trainer.fit()
    checkpoint = load_train_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert (checkpoint["epoch"], checkpoint["step"]) == (1, 0)
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler is gone with fit()


def test_two_process_preemption_resumes_exactly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(output_dir, *extra):
        args = cli_train_args(output_dir)
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                "127.0.0.1", "--master_port", str(free_port()), "-m", "dabdetr", *args, *extra]

    straight = subprocess.run(torchrun(tmp_path / "straight"), env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    process = subprocess.Popen(torchrun(tmp_path / "cut"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    send_signals_when(process, tmp_path / "cut", in_epoch_1, ["SIGTERM"])  # torchrun passes it to both ranks
    output = process.stdout.read()
    saved = load_train_checkpoint(str(tmp_path / "cut" / "checkpoint.pt"))
    assert saved["epoch"] == 1 and saved["step"] > 0 and saved["world_size"] == 2, output[-3000:]
    assert "preempted: stopped by SIGTERM" in output
    resumed = subprocess.run(torchrun(tmp_path / "cut", "--resume", "auto"), env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert_same_run(tmp_path / "straight", tmp_path / "cut")


def test_truncated_checkpoints_are_named_and_resume_auto_falls_back(tmp_path, caplog, monkeypatch):
    from dabdetr.training.checkpoint import find_resume_checkpoint

    Trainer(tiny_config(tmp_path, epochs=3, keep_last=2)).fit()
    names = sorted(p.name for p in tmp_path.glob("checkpoint*.pt"))
    assert names == ["checkpoint.pt", "checkpoint_epoch0002.pt", "checkpoint_epoch0003.pt"]
    latest = tmp_path / "checkpoint.pt"
    data = latest.read_bytes()
    latest.unlink()  # the epoch file is a hard link of it: cut a copy, not the shared inode
    latest.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"checkpoint.pt: the file is truncated or corrupt"):
        load_train_checkpoint(str(latest))
    with pytest.raises(SystemExit):
        cli(["eval", str(latest), "--num-workers", "0"])
    assert "truncated or corrupt" in caplog.text and "Errno" not in caplog.text
    path, checkpoint = find_resume_checkpoint(str(tmp_path))
    assert path == str(tmp_path / "checkpoint_epoch0003.pt") and checkpoint["epoch"] == 3
    assert "skipping" in caplog.text
    assert find_resume_checkpoint(str(tmp_path / "empty")) == (None, None)
    for p in tmp_path.glob("*.pt"):
        p.write_bytes(b"")
    with pytest.raises(ValueError, match="none of its checkpoints can be read"):
        find_resume_checkpoint(str(tmp_path))


def test_resume_names_a_model_directory_for_what_it_is(tmp_path):
    model_dir = tmp_path / "model"
    DABDETR(preset("demo", num_classes=4, **TINY_MODEL)).save_pretrained(str(model_dir))
    with pytest.raises(ValueError, match="is a dabdetr model directory .* use --init"):
        load_train_checkpoint(str(model_dir))
    (model_dir / "config.json").write_text(json.dumps({"model_type": "dab-detr"}))
    with pytest.raises(ValueError, match="is a Hugging Face DAB-DETR model directory"):
        load_train_checkpoint(str(model_dir))


def test_resume_auto_without_checkpoints_starts_a_new_run(tmp_path, caplog, monkeypatch):
    with caplog.at_level(logging.INFO, logger="dabdetr"):
        cli(cli_train_args(tmp_path, {**TINY_RUN, "epochs": 1}) + ["--resume", "auto"])
    assert f"no checkpoint in {tmp_path}, a new run" in caplog.text
    assert load_train_checkpoint(str(tmp_path / "checkpoint.pt"))["epoch"] == 1
    # The same command again: nothing left to train, and the unchanged settings are accepted.
    cli(cli_train_args(tmp_path, {**TINY_RUN, "epochs": 1}) + ["--resume", "auto"])
    with pytest.raises(SystemExit, match=r"\['lr'\] cannot change when resuming"):
        cli(cli_train_args(tmp_path, {**TINY_RUN, "epochs": 1}) + ["--resume", "auto", "--lr", "1"])


# --- accumulation, bad images, TensorBoard --------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_two_accumulated_batches_of_one_update_like_one_batch_of_two(tmp_path, preset):
    # Frozen batch norm, no dropout, no denoising noise: the model treats images independently,
    # so the only difference is the grouping. Same images (equal size: no padding), same order.
    model = {**TINY_MODEL, "backbone_norm": "frozen_bn", "dn_groups": 0}
    run = {"synthetic_train_images": 2, "epochs": 1, "model": model, "clip_max_norm": 0.0,
           "allow_random_backbone": True}
    whole = Trainer(tiny_config(tmp_path / "whole", preset, batch_size=2, **run))
    accumulated = Trainer(tiny_config(tmp_path / "accumulated", preset, batch_size=1, accumulate_steps=2, **run))
    assert all(torch.equal(a, b) for a, b in zip(whole.model.state_dict().values(),
                                                 accumulated.model.state_dict().values()))
    whole.train_batches.sampler.shuffle = accumulated.train_batches.sampler.shuffle = False
    for trainer in (whole, accumulated):
        trainer.train_epoch(0)
    # The gradients the one step applied (Adam's first step, lr * g / |g|, would magnify the float
    # noise of gradients near zero, so those are compared rather than the parameters).
    pairs = [(name, a.grad, b.grad) for (name, a), b in zip(whole.model.named_parameters(),
                                                            accumulated.model.parameters()) if a.grad is not None]
    scale = max(a.abs().max().item() for _, a, _ in pairs)  # gradients that are 0 in exact arithmetic are ~1e-9
    for name, a, b in pairs:
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6 * scale, msg=name)
    assert len(pairs) > 50 and scale > 0
    assert step_losses(tmp_path / "whole", 0) == pytest.approx(step_losses(tmp_path / "accumulated", 0), rel=1e-5)


def coco_run(root, **overrides):
    return {"data_root": str(root), "train_images": "images", "val_images": "images",
            "train_annotations": "annotations.json", "val_annotations": "annotations.json",
            "label_mapping": "contiguous", **overrides}


def test_bad_images_stop_training_or_are_skipped_and_counted(tmp_path):
    write_coco_folder(tmp_path / "coco", count=8, bad=(3,))
    with pytest.raises(ValueError, match=r"cannot decode image .*000004\.png"):
        Trainer(tiny_config(tmp_path / "strict", **coco_run(tmp_path / "coco"))).train_epoch(0)
    trainer = Trainer(tiny_config(tmp_path / "skip", **coco_run(tmp_path / "coco", skip_bad_images=True)))
    trainer.train_epoch(0)
    epoch = [r for r in log_records(tmp_path / "skip") if r["type"] == "epoch"][0]
    assert epoch["skipped_images"] == 1  # 8 images, 2 batches of 4: one left out, and said so
    assert epoch["images_per_s"] > 0 and epoch["peak_memory_mb"] > 0


def test_a_spawned_loader_worker_names_the_image_it_skips_in_the_run_log(tmp_path):
    """The training loader started by spawn (macOS's default; Linux's forkserver from Python
    3.14 likewise): the worker's warning reaches the handler the main process logs the run to."""
    write_coco_folder(tmp_path / "coco", count=8, bad=(3,))
    trainer = Trainer(tiny_config(tmp_path / "run", num_workers=1, **coco_run(tmp_path / "coco", skip_bad_images=True)))
    trainer.train_loader.multiprocessing_context = "spawn"
    handler = logging.FileHandler(tmp_path / "run.log")
    logging.getLogger("dabdetr").addHandler(handler)
    try:
        trainer.train_epoch(0)
    finally:
        logging.getLogger("dabdetr").removeHandler(handler)
        handler.close()
    assert re.search(r"skipping an unreadable image \(skip_bad_images\): cannot decode image \S+000004\.png",
                     (tmp_path / "run.log").read_text())


def test_a_data_root_of_another_layout_is_named_before_any_image_is_read(tmp_path):
    write_coco_folder(tmp_path / "coco", count=2)
    with pytest.raises(FileNotFoundError, match=r"coco/train2017 not found: data_root holds COCO's layout .*"
                                                r"--set train_images=PATH"):
        Trainer(tiny_config(tmp_path / "run", **coco_run(tmp_path / "coco", train_images="train2017")))
    annotations = str(tmp_path / "coco" / "annotations.json")
    with pytest.raises(FileNotFoundError, match="image folder not found: .*elsewhere"):
        CocoDetection(annotations, str(tmp_path / "elsewhere"), make_transforms(False, [64], 64))


@pytest.mark.parametrize("batch_size", [1, 5])  # a batch of one unreadable image; one batch of all
def test_cli_predict_stops_at_or_skips_unreadable_images(tmp_path, caplog, capsys, batch_size):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (64, 48), "white").save(folder / f"{name}.png")
    (folder / "header.png").write_text("not an image")
    Image.new("RGB", (64, 48), "gray").save(folder / "truncated.jpg", quality=95)
    whole = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])  # the header reads, the pixels do not
    model_dir = tmp_path / "model"
    DABDETR(preset("demo", num_classes=4, **TINY_MODEL)).save_pretrained(str(model_dir))
    args = ["predict", str(model_dir), str(folder), "--size", "64", "--max-size", "64", "--score-threshold", "0",
            "--batch-size", str(batch_size), "--num-workers", "1", "--no-progress",
            "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        cli(args)
    assert f"dabdetr predict: cannot decode image {folder / 'header.png'}" in caplog.text
    cli([*args, "--skip-bad-images", "--save-images"])
    images = json.loads((tmp_path / "out" / "images.json").read_text())
    assert sorted(os.path.basename(i["file_name"]) for i in images) == ["a.png", "b.png", "c.png"]
    assert {d["image_id"] for d in json.loads((tmp_path / "out" / "detections.json").read_text())} == {
        i["id"] for i in images}
    assert "in 3 images (2 unreadable ones skipped)" in capsys.readouterr().out
    assert f"skipping an unreadable image (skip_bad_images): cannot decode image {folder / 'header.png'}" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a.png", "b.png", "c.png"]


def test_cli_names_a_bad_image_that_a_loader_worker_read(tmp_path, caplog):
    """The loader re-raises a worker's error with the worker's traceback as its message: the CLI
    says what the original error said, nothing more."""
    write_coco_folder(tmp_path / "coco", count=8, bad=(3,))
    with pytest.raises(SystemExit):
        cli(cli_train_args(tmp_path / "run", {**TINY_RUN, **coco_run(tmp_path / "coco"), "num_workers": 1}))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "Traceback" not in errors[0], errors
    assert re.fullmatch(r"dabdetr train: cannot decode image \S+000004\.png: .+ \(--debug shows where\)", errors[0])


def test_coco_training_path_learns(tmp_path):
    """A few steps through the COCO loader (files on disk, category ids, transforms): the loss falls."""
    write_coco_folder(tmp_path / "coco", count=4)
    epochs = 25  # one step each
    run = coco_run(tmp_path / "coco", epochs=epochs, lr_drop=epochs, lr=3e-4, lr_backbone=3e-4,
                   model={**TINY_MODEL, "dn_groups": 0})
    trainer = Trainer(tiny_config(tmp_path / "run", **run))
    for epoch in range(epochs):
        trainer.train_epoch(epoch)
    losses = epoch_mean_losses(tmp_path / "run")
    assert sum(losses[-5:]) < 0.85 * sum(losses[:5]), losses


def test_tensorboard_gets_the_logged_numbers_and_pictures(tmp_path):
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(tiny_config(tmp_path, epochs=1, tensorboard=True)).fit()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "epoch/images_per_s", "epoch/peak_memory_mb",
            "eval/AP", "eval/AP50"} <= scalars
    logged = [r["loss"] for r in log_records(tmp_path) if r["type"] == "train"]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(logged)
    assert events.Tags()["images"] == ["eval/detections"]


def test_tensorboard_missing_is_one_warning(tmp_path, monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    trainer = Trainer(tiny_config(tmp_path, epochs=1, tensorboard=True))
    assert trainer.tensorboard is None
    assert caplog.text.count("tensorboard package is not installed") == 1


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_on_the_cpu(tmp_path, amp, preset):
    """Autocast (and for fp16 the gradient scaler) through a whole step: 16-bit MLP outputs meet
    the float32 anchors in the sine embedding, which once raised a dtype mismatch."""
    # fp16: the scaler skips the first steps, whose scaled gradients overflow, halving its scale.
    trainer = Trainer(tiny_config(tmp_path, preset, amp=amp, epochs=1, synthetic_train_images=48))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_epoch(0)
    losses = step_losses(tmp_path, 0)
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    scaler = trainer.state_dict(1)["grad_scaler"]
    assert (scaler is not None and scaler["scale"] > 0) == (amp == "fp16")


@pytest.mark.parametrize("preset", PRESETS)
def test_compiled_training_follows_the_eager_run(tmp_path, preset):
    """compile=True: the backbone, encoder and decoder in one graph with no break, the same for
    every batch (the denoising groups padded to 8 queries whatever their object counts), the
    losses step by step those of the eager run within rounding, and outside the steps the model is
    its plain self (the moving average, checkpoints and exports use it)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    losses = {}
    for compile in (False, True):
        output_dir = tmp_path / f"compile_{compile}"
        trainer = Trainer(tiny_config(output_dir, preset, epochs=1, compile=compile, synthetic_train_images=16,
                                      ema_decay=0.9))
        trainer.train_epoch(0)
        losses[compile] = step_losses(output_dir, 0)
        assert "encode_decode" not in vars(trainer.model) and "encode_decode" not in vars(trainer.ema.module)
    assert len(losses[True]) == 4
    # The first step's weights are the same; the updates then carry the kernels' rounding along.
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-5)
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)
    assert counters["stats"]["unique_graphs"] == 1 and counters["frames"]["ok"] == 1
    assert not counters["graph_break"]


def test_compile_with_images_of_varying_size_warns(tmp_path, caplog):
    Trainer(tiny_config(tmp_path / "fixed", epochs=1, compile=True))
    assert "varying size" not in caplog.text
    Trainer(tiny_config(tmp_path / "varying", epochs=1, compile=True, train_sizes=(48, 64)))
    assert caplog.text.count("compile=True with training images of varying size") == 1


def test_init_keeps_the_initialization_of_heads_that_do_not_fit(tmp_path, caplog):
    source = DABDETR(preset("demo", num_classes=91, **TINY_MODEL))
    source.save_pretrained(str(tmp_path / "pretrained"))
    with caplog.at_level(logging.INFO, logger="dabdetr"):
        trainer = Trainer(tiny_config(tmp_path / "run", init=str(tmp_path / "pretrained")))  # 4 classes
    torch.manual_seed(trainer.config.seed)  # the Trainer's seed: what the unfitting tensors keep
    fresh = DABDETR(trainer.model.config)
    ours, theirs, initial = trainer.model.state_dict(), source.state_dict(), fresh.state_dict()
    unfitting = sorted(k for k in ours if ours[k].shape != theirs[k].shape)
    assert unfitting == ["class_embed.bias", "class_embed.weight", "label_embed.weight"]
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if k not in unfitting)
    assert all(torch.equal(ours[k], initial[k]) for k in unfitting)
    assert "kept the initialization of 3 tensors" in caplog.text and "class_embed.weight" in caplog.text


def test_budgeted_epoch_steps():
    from dabdetr.training.time_budget import budgeted_epoch_steps

    # 600 s budget, 100 s spent: 4 epochs of (500 / 4 - 10 s overhead) / 0.5 s a step = 230 steps.
    assert budgeted_epoch_steps(600, 100, 0.5, 10, 4, 450) == 230
    assert budgeted_epoch_steps(6000, 100, 0.5, 10, 4, 450) == 450  # fits: the whole epochs
    assert budgeted_epoch_steps(600, 700, 0.5, 10, 4, 450) == 1  # spent: as short as they can be
    assert budgeted_epoch_steps(600, 100, 0.5, 10, 0, 450) == 450  # nothing left to size


class FakeClock:
    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


def test_time_budget_replans_every_epoch_from_the_last_speed():
    from dabdetr.training.time_budget import TimeBudget

    clock = FakeClock()
    budget = TimeBudget(10, epochs=4, clock=clock)  # 600 s; epochs of 100 steps
    budget.start()
    assert budget.steps_for(0, 100) == (100, None)  # nothing measured yet: whole
    clock.now = 100.0
    budget.record_training(100.0, 100)  # 1 s a step
    clock.now = 110.0
    budget.record_overhead(10.0)
    # 110 s spent, 10 s kept for the final outputs: 3 epochs of 160 s - 10 s overhead fit 150 steps.
    steps, plan = budget.steps_for(1, 100)
    assert steps == 100 and plan["projected_min"] == pytest.approx((110 + 3 * 110 + 10) / 60)
    clock.now = 310.0
    budget.record_training(200.0, 100)  # the machine slowed down: 2 s a step
    clock.now = 320.0
    budget.record_overhead(10.0)
    # (600 - 320 - 10) / 2 epochs - 10 s = 125 s: 62 steps of 2 s.
    assert budget.steps_for(2, 100)[0] == 62
    clock.now = 382.0
    budget.record_training(62.0, 62)  # fast again
    clock.now = 392.0
    budget.record_overhead(10.0)
    assert budget.steps_for(3, 100)[0] == 100  # 600 - 402 - 10 = 188 s: whole again
    assert budget.epoch_steps == [100, 100, 62, 100]
    assert budget.steps_for(2, 100) == (62, None)  # a plan made stays


def test_time_budget_state_continues_in_a_new_process():
    from dabdetr.training.time_budget import TimeBudget

    clock = FakeClock(1000.0)
    budget = TimeBudget(10, epochs=3, clock=clock)
    budget.start()
    budget.steps_for(0, 100)
    clock.now = 1300.0
    budget.record_training(300.0, 100)
    budget.record_overhead(20.0)
    planned = budget.steps_for(1, 100)[0]  # (600 - 300 - 20) / 2 - 20 = 120 s: 40 steps
    assert planned == 40
    clock.now = 1350.0
    state = budget.state_dict()  # a checkpoint within epoch 1, 350 s into the run

    later = FakeClock(99.0)  # another process, after a wait that is not the run's
    resumed = TimeBudget(10, epochs=3, clock=later)
    resumed.load_state_dict(state)
    resumed.start()
    later.now = 109.0
    assert resumed.spent_s() == pytest.approx(360.0)
    assert resumed.steps_for(1, 100) == (40, None)


@pytest.mark.parametrize("budget_min, later_steps", [(1e-4, 1), (1000.0, 2)])
def test_time_budget_shortens_the_epochs_after_the_first(tmp_path, budget_min, later_steps):
    # 8 images in batches of 4: 2 steps an epoch. A budget the first epoch has spent leaves the
    # later epochs one step each; a large one leaves them whole.
    config = tiny_config(tmp_path, epochs=3, lr_drop=2, synthetic_train_images=8, batch_size=4,
                         time_budget_min=budget_min)
    trainer = Trainer(config)
    trainer.fit()
    records = log_records(tmp_path)
    steps = [len([r for r in records if r["type"] == "train" and r["epoch"] == epoch]) for epoch in range(3)]
    assert steps == [2, later_steps, later_steps] == trainer.time_budget.epoch_steps
    assert [(r["epoch"], r["steps"]) for r in records if r["type"] == "budget"] == [(1, later_steps), (2, later_steps)]
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f)["epoch_steps"] == steps
    checkpoint = load_train_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert checkpoint["time_budget"]["epoch_steps"] == steps
    assert Trainer.from_checkpoint(str(tmp_path / "checkpoint.pt")).time_budget.epoch_steps == steps


def test_a_resumed_run_keeps_its_time_budget(tmp_path, monkeypatch):
    # Killed at the first step of epoch 1: the checkpoint of epoch 0's end holds the speed and
    # the time spent, so the resumed run plans the epochs left as the first would have.
    config = tiny_config(tmp_path, epochs=3, lr_drop=2, synthetic_train_images=8, batch_size=4,
                         time_budget_min=1e-4)
    fit_until_killed(Trainer(config), monkeypatch, 3)
    checkpoint = load_train_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert checkpoint["epoch"] == 1 and checkpoint["time_budget"]["spent_s"] > 0
    assert checkpoint["time_budget"]["epoch_steps"] == [2]
    resumed = Trainer.from_checkpoint(str(tmp_path / "checkpoint.pt"), checkpoint)
    resumed.fit()
    assert resumed.time_budget.epoch_steps == [2, 1, 1]
    assert [len(step_losses(tmp_path, epoch)) for epoch in range(3)] == [2, 1, 1]

    # A checkpoint of before per-epoch plans (one step count for epochs 1..) resumes with it.
    del checkpoint["time_budget"]
    checkpoint["epoch_steps"] = 1
    assert Trainer.from_checkpoint(str(tmp_path / "checkpoint.pt"), checkpoint).time_budget.epoch_steps == [None, 1, 1]
