"""The published DAB-DETR checkpoints, by short name: where each lives, its format, the preset it
fits and its published box AP on COCO val2017. from_pretrained, --init, `dabdetr eval` and
`dabdetr predict` take these names; `dabdetr zoo` prints the table.
"""

from dataclasses import dataclass, field

# The hub's checkpoints are the official ones converted; evaluated with the official
# inverse-sigmoid eps (docs/checkpoints.md, pitfall 1) they give the official outputs, and so the
# official AP. Hugging Face's config implies its own 1e-5.
OFFICIAL_EPS = {"anchor_update_eps": 1e-3, "box_head_eps": 1e-3}
DETREX = "https://github.com/IDEA-Research/detrex-storage/releases/download"


@dataclass(frozen=True)
class PublishedModel:
    name: str
    location: str  # a Hugging Face hub id or a URL (dabdetr.weights.hub.resolve)
    format: str  # a dabdetr.weights.pretrained source
    preset: str  # the dabdetr.models.config preset of its architecture
    box_ap: float  # published COCO val2017 box AP
    ap_source: str  # who published that AP
    overrides: dict = field(default_factory=dict)  # DABDETRConfig fields the checkpoint does not carry
    # A location that needs a browser (Google Drive): from_pretrained says where to get the file
    # and takes its path instead of the name.
    manual_download: bool = False


PUBLISHED = {m.name: m for m in [
    PublishedModel("dab-detr-r50", "IDEA-Research/dab-detr-resnet-50", "huggingface", "dab_detr_r50", 42.2,
                   "official model zoo", OFFICIAL_EPS),
    PublishedModel("dab-detr-r50-3pat", "IDEA-Research/dab-detr-resnet-50-pat3", "huggingface", "dab_detr_r50_3pat",
                   42.6, "official model zoo", OFFICIAL_EPS),
    PublishedModel("dab-detr-r50-dc5", "IDEA-Research/dab-detr-resnet-50-dc5", "huggingface", "dab_detr_r50_dc5",
                   44.5, "official model zoo", OFFICIAL_EPS),
    PublishedModel("dab-detr-r50-dc5-fixxy", "IDEA-Research/dab-detr-resnet-50-dc5-fixxy", "huggingface",
                   "dab_detr_r50_dc5_fixxy", 44.7, "official model zoo", OFFICIAL_EPS),
    PublishedModel("dab-detr-r50-dc5-3pat", "IDEA-Research/dab-detr-resnet-50-dc5-pat3", "huggingface",
                   "dab_detr_r50_dc5_3pat", 45.7, "official model zoo", OFFICIAL_EPS),
    PublishedModel("mmdet-dab-detr-r50",
                   "https://download.openmmlab.com/mmdetection/v3.0/dab_detr/dab-detr_r50_8xb2-50e_coco/"
                   "dab-detr_r50_8xb2-50e_coco_20221122_120837-c1035c8c.pth",
                   "mmdetection", "dab_detr_r50", 42.3, "MMDetection 3.x model zoo"),
    PublishedModel("detrex-dab-detr-r50", f"{DETREX}/v0.1.0/dab_detr_r50_50ep.pth", "detrex", "dab_detr_r50", 43.3,
                   "detrex model zoo"),
    PublishedModel("detrex-dab-detr-r101", f"{DETREX}/v0.1.0/dab_detr_r101_50ep.pth", "detrex", "dab_detr_r101", 44.0,
                   "detrex model zoo"),
    PublishedModel("detrex-dab-deformable-detr-r50", f"{DETREX}/v0.2.0/dab_deformable_detr_r50_50ep_49AP.pth",
                   "detrex", "dab_deformable_detr_r50", 49.0, "detrex model zoo"),
    PublishedModel("detrex-dab-deformable-detr-r50-two-stage",
                   f"{DETREX}/v0.2.0/dab_deformable_detr_r50_two_stage_49_7AP.pth", "detrex",
                   "dab_deformable_detr_r50_two_stage", 49.7, "detrex model zoo"),
    PublishedModel("dab-deformable-detr-r50", "https://drive.google.com/drive/folders/1ByfbyCZL8o6zOKqH6dQFCsVQ8dgRXfUU",
                   "official", "dab_deformable_detr_r50", 48.7, "official model zoo", manual_download=True),
]}


def table():
    """The published checkpoints as a text table (what `dabdetr zoo` prints)."""
    rows = [("name", "preset", "box AP", "AP from", "format", "weights")]
    rows += [(m.name, m.preset, f"{m.box_ap:.1f}", m.ap_source, m.format,
              m.location + " (download by hand)" * m.manual_download) for m in PUBLISHED.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]) for row in rows) + "\n"
