"""Training under torch.compile (TrainConfig.compile): the detector's backbone, encoder and decoder
(its encode_decode) compiled, with their backward; the denoising queries built from the batch's
targets, the heads, the matcher, the loss and the optimizer stay eager.

Only that part: compiling the whole forward fails in torch 2.13 (AOTAutograd replays the denoising
outputs' views with garbage shapes, pytorch/pytorch#185630), and the targets' object counts would
make a graph per batch. The denoising groups are padded to a multiple of 8 queries
(denoising.GROUP_LENGTH_MULTIPLE), so a run builds a few graphs, one per group length.

The compiled function is installed on the model only while training steps run: evaluation, the
moving average, checkpoints and exports see the plain module.
"""

import contextlib

import torch


class CompiledEncodeDecode:
    """torch.compile of model.encode_decode, built once (graphs are kept across epochs), in use
    within `with compiled.active():`."""

    def __init__(self, model):
        self.model = model
        self.compiled = torch.compile(model.encode_decode)

    @contextlib.contextmanager
    def active(self):
        self.model.encode_decode = self.compiled  # an instance attribute shadows the method
        try:
            yield
        finally:
            del self.model.encode_decode
