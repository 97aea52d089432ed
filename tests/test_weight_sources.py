"""Where weights come from, without a network: published names and Hugging Face hub ids from a
hub cache laid out by the test (offline), URLs from an HTTP server on 127.0.0.1 (hash, 404,
truncation), and backbone weights in torchvision's, timm's and Hugging Face's layouts."""

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest
import torch

import dabdetr
from dabdetr.cli import main as cli
from dabdetr.models import DABDETR, preset
from dabdetr.models.backbone import ResNet
from dabdetr.weights import hub, zoo
from dabdetr.weights.backbone import IMAGENET_URLS, load_backbone_weights
from dabdetr.weights.formats.huggingface import save_huggingface
from dabdetr.weights.formats.official import to_official_state_dict

TINY = {"hidden_dim": 32, "ffn_dim": 64, "num_encoder_layers": 1, "num_decoder_layers": 2, "num_queries": 6,
        "num_heads": 4, "dn_groups": 0}
# As published models have them.
PUBLISHED_SETTINGS = {"backbone_norm": "frozen_bn", "backbone_frozen_stages": 1, "anchor_temperature": 10000.0}


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = DABDETR(preset("demo", **{**TINY, **PUBLISHED_SETTINGS, **overrides})).eval()
    with torch.no_grad():  # spread the anchors, so that models of other seeds differ everywhere
        model.refpoint_embed.weight.normal_()
    return model


def assert_same_state(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


# --- Hugging Face hub ids and published names, offline ----------------------------------------

def write_hub_snapshot(cache, repo_id, model, refs=("main",), commit=None):
    """Lays out what huggingface_hub leaves in its cache after downloading repo_id: a snapshot
    directory named by the commit (config.json, model.safetensors) and refs naming that commit."""
    commit = commit or hashlib.sha1(repo_id.encode() + bytes(refs[0], "utf-8")).hexdigest()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    save_huggingface(model, str(repo / "snapshots" / commit))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return commit


def test_hub_ids_and_published_names_load_from_the_hub_cache_offline(tmp_path):
    pytest.importorskip("huggingface_hub")
    pytest.importorskip("safetensors")
    cache = tmp_path / "hub"
    main, tagged = tiny_model(0), tiny_model(1)
    write_hub_snapshot(cache, "testorg/tiny-dab-detr", main)
    commit = write_hub_snapshot(cache, "testorg/tiny-dab-detr", tagged, refs=("v1",))
    published = zoo.PUBLISHED["dab-detr-r50"]
    write_hub_snapshot(cache, published.location, main)
    torch.save({"main": main.state_dict(), "tagged": tagged.state_dict()}, tmp_path / "expected.pt")
    script = f"""
import torch, dabdetr
loaded = {{
    "by_id": dabdetr.from_pretrained("testorg/tiny-dab-detr"),
    "by_tag": dabdetr.from_pretrained("testorg/tiny-dab-detr@v1"),
    "by_revision": dabdetr.from_pretrained("testorg/tiny-dab-detr", revision="{commit}"),
    "by_name": dabdetr.from_pretrained("dab-detr-r50"),
}}
torch.save({{k: m.state_dict() for k, m in loaded.items()}}, "loaded.pt")
eps = loaded["by_name"].config.anchor_update_eps, loaded["by_name"].config.box_head_eps
print(eps, loaded["by_id"].config.anchor_update_eps)
try:
    dabdetr.from_pretrained("testorg/not-in-the-cache")
except ValueError as error:
    print("ERROR:", error)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded, expected = torch.load(tmp_path / "loaded.pt"), torch.load(tmp_path / "expected.pt")
    assert_same_state(loaded["by_id"], expected["main"])
    assert_same_state(loaded["by_tag"], expected["tagged"])
    assert_same_state(loaded["by_revision"], expected["tagged"])
    assert_same_state(loaded["by_name"], expected["main"])
    # The published name reads the hub's weights with the official eps (the published AP's);
    # the plain hub id with Hugging Face's.
    assert "(0.001, 0.001) 1e-05" in result.stdout
    assert "ERROR: testorg/not-in-the-cache: no such local path" in result.stdout and "HF_HUB_OFFLINE" in result.stdout


def test_hub_id_without_huggingface_hub_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"needs the huggingface_hub package .*dabdetr\[hub\]"):
        hub.resolve("testorg/tiny-dab-detr")


def test_a_missing_path_that_is_no_hub_id_is_a_missing_file():
    with pytest.raises(FileNotFoundError, match="no file or directory at /nonexistent/dir/model") as missing:
        dabdetr.from_pretrained("/nonexistent/dir/model")
    assert "did you mean" not in str(missing.value)
    for name in zoo.PUBLISHED:  # one character off: named as the published model it is close to
        with pytest.raises(FileNotFoundError, match=f"did you mean the published model '{name}'"):
            dabdetr.from_pretrained(name[:-1] + ("O" if name[-1] != "O" else "Q"))


def test_zoo_lists_every_published_checkpoint(capsys):
    cli(["zoo"])
    out = capsys.readouterr().out
    for model in zoo.PUBLISHED.values():
        assert model.name in out and model.location in out and f"{model.box_ap:.1f}" in out
        preset(model.preset)  # each fits a preset
    assert zoo.PUBLISHED["mmdet-dab-detr-r50"].box_ap == 42.3 and zoo.PUBLISHED["dab-detr-r50"].box_ap == 42.2


# --- URLs, from a server on this machine --------------------------------------------------------

class Files(http.server.BaseHTTPRequestHandler):
    """Serves self.server.files {path: bytes}; paths under /truncated/ send half of their bytes
    after announcing all of them."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):
        content = self.server.files.get(self.path.replace("/truncated/", "/"))
        if content is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content[: len(content) // 2] if self.path.startswith("/truncated/") else content)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    httpd.files = {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def serialized(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_urls_download_once_into_torch_cache_with_their_hash_checked(server, torch_home):
    httpd, base = server
    model = tiny_model(backbone_stage=4)  # C5, as official checkpoints (which do not say) are read
    content = serialized({"model": to_official_state_dict(model)})
    digest = hashlib.sha256(content).hexdigest()
    httpd.files = {f"/m/tiny-{digest[:8]}.pth": content, "/m/tiny-0badc0de.pth": content, "/m/plain.pth": content}

    loaded = dabdetr.from_pretrained(f"{base}/m/tiny-{digest[:8]}.pth")
    assert_same_state(loaded.state_dict(), model.state_dict())
    assert sorted(os.listdir(torch_home)) == [f"tiny-{digest[:8]}.pth"]
    httpd.files = {}  # cached: no second download
    dabdetr.from_pretrained(f"{base}/m/tiny-{digest[:8]}.pth")

    httpd.files = {"/m/tiny-0badc0de.pth": content, "/m/plain.pth": content}
    with pytest.raises(ValueError, match=f"SHA-256 {digest} does not start with the '0badc0de'"):
        dabdetr.from_pretrained(f"{base}/m/tiny-0badc0de.pth")
    with pytest.raises(ValueError, match=r"tiny-00000000.pth: the server answered 404"):
        dabdetr.from_pretrained(f"{base}/m/tiny-00000000.pth")
    with pytest.raises(ValueError, match=rf"plain.pth: the download is truncated \({len(content) // 2} of "
                                         rf"{len(content)} bytes\)"):
        dabdetr.from_pretrained(f"{base}/truncated/m/plain.pth")
    assert sorted(os.listdir(torch_home)) == [f"tiny-{digest[:8]}.pth"]  # nothing half-written kept
    assert hub.download(f"{base}/m/plain.pth", progress=False) == str(torch_home / "plain.pth")  # no hash: any


def test_the_mmdetection_checkpoint_url_carries_its_hash():
    url = zoo.PUBLISHED["mmdet-dab-detr-r50"].location
    assert torch.hub.HASH_REGEX.search(os.path.basename(url)).group(1) == "c1035c8c"
    assert hub.cache_path(url).endswith(os.path.join("hub", "checkpoints", os.path.basename(url)))


# --- backbone weights ---------------------------------------------------------------------------

def torchvision_resnet_state(name, seed=0):
    """A random ResNet's state dict as torchvision's classifier has it (with fc and batch-norm
    counters), with batch-norm statistics that are not the identity."""
    torch.manual_seed(seed)
    resnet = ResNet(name, norm_layer=torch.nn.BatchNorm2d)
    with torch.no_grad():
        for module in resnet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor in (module.weight, module.bias, module.running_mean):
                    tensor.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2)
    width = resnet.num_channels[-1]
    return {**resnet.state_dict(), "fc.weight": torch.randn(1000, width), "fc.bias": torch.randn(1000)}


def backbone_state(model):
    return {k: v for k, v in model.backbone.body.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_imagenet_weights_come_from_torch_cache(torch_home, caplog):
    state = torchvision_resnet_state("resnet18")
    assert {"layer1.0.conv1.weight", "layer2.0.downsample.1.running_var", "fc.bias"} <= set(state)  # torchvision's
    torch_home.mkdir(parents=True)
    torch.save(state, torch_home / os.path.basename(IMAGENET_URLS["resnet18"]))  # what torchvision would have fetched
    model = tiny_model(backbone_weights="imagenet")
    with caplog.at_level("INFO", logger="dabdetr"):
        report = load_backbone_weights(model)
    # The classifier, batch-norm counters and layer4, which the demo's C4 model does not build.
    assert set(report["left_out"]) == {k for k in state if k.startswith(("fc.", "layer4.")) or "num_batches" in k}
    loaded = backbone_state(model)
    assert loaded and all(torch.equal(v, state[k]) for k, v in loaded.items())
    assert "NOT EXPECTED" not in caplog.text and "loaded" in caplog.text


def test_timm_layout_from_a_hub_cache_safetensors(tmp_path, monkeypatch):
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    # timm's ResNets keep torchvision's names; its hub repositories hold model.safetensors.
    state = {k: v for k, v in torchvision_resnet_state("resnet34", seed=1).items()
             if not k.endswith("num_batches_tracked")}
    snapshot = tmp_path / "hub" / "models--timm--resnet34.test" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    safetensors_torch.save_file(state, str(snapshot / "model.safetensors"))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    model = tiny_model(backbone="resnet34", backbone_weights="timm/resnet34.test")
    load_backbone_weights(model)
    assert all(torch.equal(v, state[k]) for k, v in backbone_state(model).items())


def test_huggingface_resnet_layout_computes_what_transformers_computes(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ResNetConfig(layer_type="bottleneck", depths=[3, 4, 6, 3],
                                       hidden_sizes=[256, 512, 1024, 2048])
    classifier = transformers.ResNetForImageClassification(config).eval()
    with torch.no_grad():
        for module in classifier.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2)
                module.weight.normal_(1, 0.1)
    torch.save(classifier.state_dict(), tmp_path / "pytorch_model.bin")
    assert any(k.startswith("resnet.embedder.") for k in classifier.state_dict())
    model = tiny_model(backbone="resnet50", backbone_stage=4)
    report = load_backbone_weights(model, str(tmp_path / "pytorch_model.bin"))
    assert {"classifier.1.weight", "classifier.1.bias"} <= set(report["left_out"])
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = classifier.resnet(images).last_hidden_state
        torch.testing.assert_close(model.backbone.body(images)[-1], expected, rtol=1e-4, atol=1e-4)


def test_backbone_weights_of_another_depth_or_kind_are_refused(tmp_path):
    torch.save(torchvision_resnet_state("resnet34"), tmp_path / "resnet34.pth")
    model = tiny_model(backbone="resnet18")
    with pytest.raises(ValueError, match="weights of a resnet34, the model's backbone is a resnet18"):
        load_backbone_weights(model, str(tmp_path / "resnet34.pth"))
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not the weights of a ResNet"):
        load_backbone_weights(model, str(tmp_path / "other.pth"))
    partial = {k: v for k, v in torchvision_resnet_state("resnet18").items() if not k.startswith("layer2.1.")}
    torch.save({"state_dict": {"module." + k: v for k, v in partial.items()}}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"the weights lack \d+ of the backbone's"):
        load_backbone_weights(model, str(tmp_path / "partial.pth"))
    assert load_backbone_weights(model, "none") is None


def test_whole_checkpoints_never_fetch_backbone_weights(tmp_path):
    # A URL nothing answers: fetching it would fail the load.
    model = tiny_model(backbone_weights="http://127.0.0.1:9/resnet18-00000000.pth")
    model.save_pretrained(str(tmp_path / "model"))
    loaded = dabdetr.from_pretrained(str(tmp_path / "model"))
    assert loaded.config.backbone_weights == model.config.backbone_weights
    assert_same_state(loaded.state_dict(), model.state_dict())


# --- training from pretrained backbone weights --------------------------------------------------

RUN = {"synthetic_train_images": 8, "synthetic_val_images": 2, "synthetic_image_size": 64, "train_sizes": (64,),
       "max_size": 64, "eval_size": 64, "batch_size": 4, "num_workers": 0, "progress": False, "epochs": 1,
       "crop_resize_sizes": ()}


def test_published_preset_trains_from_loaded_weights_with_frozen_stages_unchanged(tmp_path):
    pytest.importorskip("pycocotools")
    from dabdetr.training.config import recipe
    from dabdetr.training.trainer import Trainer

    state = torchvision_resnet_state("resnet50")
    torch.save(state, tmp_path / "resnet50.pth")
    config = recipe("dab_detr_r50", output_dir=str(tmp_path / "run"), **RUN,
                    model={**TINY, "backbone_weights": str(tmp_path / "resnet50.pth")})
    trainer = Trainer(config)
    assert all(torch.equal(v, state[k]) for k, v in backbone_state(trainer.model).items())  # loaded
    trainer.fit()
    trained = backbone_state(trainer.model)
    frozen = {k for k in trained if k.startswith(("conv1.", "bn1.", "layer1."))}
    assert frozen and all(torch.equal(trained[k], state[k]) for k in frozen)
    # Frozen batch norm everywhere; the convolutions of layer2..4 learn.
    assert all(torch.equal(trained[k], state[k]) for k in trained if ".bn" in k or "downsample.1" in k)
    moved = [k for k in trained if k.startswith("layer") and k not in frozen and k.endswith("conv1.weight")]
    assert moved and all(not torch.equal(trained[k], state[k]) for k in moved)


def test_a_random_frozen_backbone_is_refused_unless_asked_for(tmp_path, caplog):
    from dabdetr.training.config import recipe
    from dabdetr.training.trainer import Trainer

    config = recipe("dab_detr_r50", output_dir=str(tmp_path / "run"), **RUN, model={**TINY, "backbone_weights": "none"})
    with pytest.raises(ValueError, match="starts from random weights .*--model backbone_weights=imagenet"):
        Trainer(config)
    Trainer(config.replace(allow_random_backbone=True))
    scratch = {"backbone_norm": "batch_norm", "backbone_frozen_stages": 0}
    Trainer(config.replace(model={**config.model, **scratch}))  # trained from scratch: nothing frozen
    with pytest.raises(SystemExit), caplog.at_level("ERROR", logger="dabdetr"):
        cli(["train", "--preset", "dab_detr_r50", "--model", "backbone_weights=none", "--output-dir",
             str(tmp_path / "cli")])
    assert "backbone_weights='none'" in caplog.text


def test_init_never_fetches_backbone_weights(tmp_path):
    pytest.importorskip("pycocotools")
    from dabdetr.training.config import recipe
    from dabdetr.training.trainer import Trainer

    source = tiny_model(num_classes=4)
    source.save_pretrained(str(tmp_path / "source"))
    config = recipe("demo", output_dir=str(tmp_path / "run"), **RUN, init=str(tmp_path / "source"),
                    model={**TINY, **PUBLISHED_SETTINGS,
                           "backbone_weights": "http://127.0.0.1:9/resnet18-00000000.pth"})
    trainer = Trainer(config)
    assert all(torch.equal(v, source.state_dict()[f"backbone.body.{k}"])
               for k, v in trainer.model.backbone.body.state_dict().items())


def test_unknown_model_field_is_a_one_line_error(tmp_path, caplog):
    with pytest.raises(SystemExit), caplog.at_level("ERROR", logger="dabdetr"):
        cli(["train", "--model", "nonsense=1", "--output-dir", str(tmp_path)])
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "unknown DABDETRConfig field nonsense; the fields are architecture, backbone, " in record.getMessage()
    assert "backbone_weights" in record.getMessage() and "\n" not in record.getMessage()


def test_eval_data_root_reads_coco_val2017(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    from coco_fixture import write_coco_folder

    annotations, images = write_coco_folder(str(tmp_path / "gen"), count=2, size=64)
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    os.replace(annotations, root / "annotations" / "instances_val2017.json")
    os.replace(images, root / "val2017")
    tiny_model(num_classes=4).save_pretrained(str(tmp_path / "model"))
    cli(["eval", str(tmp_path / "model"), "--data-root", str(root), "--eval-size", "64", "--max-size", "64",
         "--num-workers", "0", "--output", str(tmp_path / "detections.json")])
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-2])
    assert 0 <= metrics["AP"] <= 1
