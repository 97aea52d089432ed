"""The checkpoint formats dabdetr reads and writes, one module each: native (our model
directory), official (IDEA-Research/DAB-DETR), mmdetection, huggingface (transformers); renames
holds the rename engine they share, fixed_settings what the other implementations hard-code.
dabdetr.weights.pretrained detects a path's format and builds the model (docs/checkpoints.md).
They import no model code: they map tensors and configs."""
