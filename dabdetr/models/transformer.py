"""DAB-DETR's encoder and decoder (docs/architecture.md), batch-first.

Every attention runs through dabdetr.ops.modulated_attention: the encoder's and the decoder's
self-attention as plain attention, the decoder's cross-attention with its content and
positional halves kept apart. The anchor embedding runs through
dabdetr.ops.modulated_anchor_sine_embed. Parameter names follow the official implementation.
"""

import torch
import torch.nn.functional as F
from torch import nn

from dabdetr.ops import modulated_anchor_sine_embed, modulated_attention


class MLP(nn.Module):
    """num_layers Linear layers (names layers.{j}) with ReLU between them."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def inverse_sigmoid(x, eps):
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def split_heads(x, num_heads):
    """[B, N, H*D] -> [B, H, N, D] as a view (the layout the fused op reads in place)."""
    B, N, C = x.shape
    return x.view(B, N, num_heads, C // num_heads).transpose(1, 2)


def merge_heads(x):
    """[B, H, N, D] -> [B, N, H*D]."""
    B, H, N, D = x.shape
    return x.transpose(1, 2).reshape(B, N, H * D)


def blockwise_self_attention(q, k, v, query_blocks, num_heads, impl):
    """Self-attention within blocks of queries: q, k, v [B, N, H*D] -> [B, N, H*D].

    query_blocks: (count, length, padding) triples covering the N queries in order: `count`
    consecutive blocks of `length` queries, each query attending to its own block only; padding
    [B * count, length] bool (True = a query no other attends to) or None. [(1, N, None)] is plain
    self-attention. The matching queries and each denoising group are blocks: one decoder pass
    serves them all, with DN-DETR's attention mask as separate attention calls.
    """
    B, outputs, start = q.shape[0], [], 0
    for count, length, padding in query_blocks:
        span = slice(start, start + count * length)
        q_b, k_b, v_b = (split_heads(x[:, span].reshape(B * count, length, -1), num_heads) for x in (q, k, v))
        out = modulated_attention(q_b, None, k_b, None, v_b, padding, impl=impl)
        outputs.append(merge_heads(out).reshape(B, count * length, -1))
        start += count * length
    return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]


class EncoderSelfAttention(nn.Module):
    """Standard multi-head attention with packed input projections (in_proj_weight rows q|k|v)."""

    def __init__(self, dim, num_heads, ops_impl):
        super().__init__()
        self.num_heads, self.ops_impl = num_heads, ops_impl
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query, key, value, key_padding_mask):
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q, k, v = (split_heads(F.linear(x, w, b), self.num_heads)
                   for x, w, b in ((query, w_q, b_q), (key, w_k, b_k), (value, w_v, b_v)))
        out = modulated_attention(q, None, k, None, v, key_padding_mask, impl=self.ops_impl)
        return self.out_proj(merge_heads(out))


class EncoderLayer(nn.Module):
    """Post-norm: x = LN1(x + SA(x + p, x + p, x)); x = LN2(x + FFN(x))."""

    def __init__(self, config):
        super().__init__()
        d = config.hidden_dim
        self.self_attn = EncoderSelfAttention(d, config.num_heads, config.ops_impl)
        self.linear1, self.linear2 = nn.Linear(d, config.ffn_dim), nn.Linear(config.ffn_dim, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.activation = nn.PReLU()
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, src, pos, key_padding_mask):
        q = k = src + pos
        src = self.norm1(src + self.dropout(self.self_attn(q, k, src, key_padding_mask)))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


class Encoder(nn.Module):
    """src [B, S, d], pos [B, S, d], key_padding_mask [B, S] -> memory [B, S, d]. Each layer sees
    pos scaled element-wise by query_scale(src) (one MLP shared by all layers)."""

    def __init__(self, config):
        super().__init__()
        d = config.hidden_dim
        self.query_scale = MLP(d, d, d, 2)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_encoder_layers))

    def forward(self, src, pos, key_padding_mask):
        for layer in self.layers:
            src = layer(src, pos * self.query_scale(src), key_padding_mask)
        return src


class DecoderLayer(nn.Module):
    """Conditional self-attention, then cross-attention whose per-head query is
    [content | sine-positional] against keys [content | positional], then the FFN."""

    def __init__(self, config, is_first):
        super().__init__()
        d, self.num_heads, self.ops_impl = config.hidden_dim, config.num_heads, config.ops_impl
        self.is_first, self.keep_query_pos = is_first, config.keep_query_pos
        for name in ("sa_qcontent_proj", "sa_qpos_proj", "sa_kcontent_proj", "sa_kpos_proj", "sa_v_proj",
                     "ca_qcontent_proj", "ca_kcontent_proj", "ca_kpos_proj", "ca_v_proj", "ca_qpos_sine_proj"):
            setattr(self, name, nn.Linear(d, d))
        if is_first or config.keep_query_pos:
            self.ca_qpos_proj = nn.Linear(d, d)
        self.self_attn = nn.Module()
        self.self_attn.out_proj = nn.Linear(d, d)
        self.cross_attn = nn.Module()
        self.cross_attn.out_proj = nn.Linear(d, d)
        nn.init.zeros_(self.self_attn.out_proj.bias)
        nn.init.zeros_(self.cross_attn.out_proj.bias)
        self.linear1, self.linear2 = nn.Linear(d, config.ffn_dim), nn.Linear(config.ffn_dim, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.activation = nn.PReLU()
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, tgt, memory, pos, key_padding_mask, query_pos, query_sine_embed, query_blocks):
        """tgt, query_pos, query_sine_embed [B, N, d]; memory, pos [B, S, d]; key_padding_mask [B, S];
        query_blocks: which queries see each other in self-attention (blockwise_self_attention)."""
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        v = self.sa_v_proj(tgt)
        sa = blockwise_self_attention(q, k, v, query_blocks, self.num_heads, self.ops_impl)
        tgt = self.norm1(tgt + self.dropout(self.self_attn.out_proj(sa)))

        heads = self.num_heads
        q_content = self.ca_qcontent_proj(tgt)
        k_content, k_pos, value = self.ca_kcontent_proj(memory), self.ca_kpos_proj(pos), self.ca_v_proj(memory)
        if self.is_first or self.keep_query_pos:
            q_content = q_content + self.ca_qpos_proj(query_pos)
            k_content = k_content + k_pos
        q_sine = self.ca_qpos_sine_proj(query_sine_embed)
        ca = modulated_attention(
            split_heads(q_content, heads), split_heads(q_sine, heads), split_heads(k_content, heads),
            split_heads(k_pos, heads), split_heads(value, heads), key_padding_mask, impl=self.ops_impl,
        )  # scale 1/sqrt(2 * head_dim), as the official per-head concatenation
        tgt = self.norm2(tgt + self.dropout(self.cross_attn.out_proj(merge_heads(ca))))

        ffn = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout(ffn))


class Decoder(nn.Module):
    """The DAB decoder: anchors refined layer by layer (docs/architecture.md)."""

    def __init__(self, config):
        super().__init__()
        d = config.hidden_dim
        self.config = config
        self.layers = nn.ModuleList(DecoderLayer(config, is_first=i == 0) for i in range(config.num_decoder_layers))
        self.norm = nn.LayerNorm(d)
        self.query_scale = MLP(d, d, d, 2)
        self.ref_point_head = MLP(2 * d, d, d, 2)
        self.ref_anchor_head = MLP(d, d, 2, 2)

    def forward(self, tgt, memory, pos, key_padding_mask, anchors, bbox_embed, query_blocks=None):
        """tgt [B, N, d]; memory, pos [B, S, d]; key_padding_mask [B, S]; anchors [B, N, 4]
        (cx, cy, w, h) in (0, 1); bbox_embed: the box head, shared with the detector;
        query_blocks: which queries see each other in self-attention (blockwise_self_attention;
        None: all of them).

        Returns hs [L, B, N, d] (every layer's output after the shared norm) and references
        [L, B, N, 4] (the anchors each layer used; the first not detached).
        """
        B, N = tgt.shape[:2]
        query_blocks = query_blocks or [(1, N, None)]
        if sum(count * length for count, length, _ in query_blocks) != N:
            raise ValueError(f"decoder: query blocks {[(c, n) for c, n, _ in query_blocks]} (count, length) do not "
                             f"cover the {N} queries")
        for count, length, padding in query_blocks:
            if padding is not None and padding.shape != (B * count, length):
                raise ValueError(f"decoder: padding of {count} blocks of {length} queries has shape "
                                 f"{tuple(padding.shape)}, expected {(B * count, length)}")
        config, eps = self.config, self.config.anchor_update_eps
        reference, references, hs = anchors, [anchors], []
        for i, layer in enumerate(self.layers):
            # The anchor embedding runs in the anchors' dtype (float32 under autocast too, where the
            # MLPs' outputs come in 16 bits): sines of anchor coordinates need the precision.
            xy_scale = self.query_scale(tgt).to(reference.dtype) if i > 0 else None
            ref_wh = self.ref_anchor_head(tgt).sigmoid().to(reference.dtype)
            anchor_embed, query_sine_embed = modulated_anchor_sine_embed(
                reference, xy_scale, ref_wh, num_feats=config.hidden_dim // 2,
                temperature=config.anchor_temperature, impl=config.ops_impl,
            )
            query_pos = self.ref_point_head(anchor_embed)
            tgt = layer(tgt, memory, pos, key_padding_mask, query_pos, query_sine_embed, query_blocks)
            new_reference = (bbox_embed(tgt) + inverse_sigmoid(reference, eps)).sigmoid()
            if i < len(self.layers) - 1:
                references.append(new_reference)
            reference = new_reference.detach()
            hs.append(self.norm(tgt))
        return torch.stack(hs), torch.stack(references)


class Transformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        for p in self.parameters():  # the official init; patterns (below) stay N(0, 1)
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.patterns = nn.Embedding(config.num_patterns, config.hidden_dim) if config.num_patterns > 0 else None

    def forward(self, src, pos, key_padding_mask, anchor_logits, bbox_embed, extra_queries=None):
        """src, pos [B, S, d]; key_padding_mask [B, S]; anchor_logits [Nq, 4] (unsigmoided);
        extra_queries: None, or (tgt [B, Ne, d], anchors [B, Ne, 4], query_blocks): queries decoded
        in the same pass after the Nq' matching queries, in self-attention seeing only their own
        block of query_blocks (the denoising groups).
        Returns (hs [L, B, Nq' + Ne, d], references [L, B, Nq' + Ne, 4]); Nq' = Nq * max(num_patterns, 1)."""
        memory = self.encoder(src, pos, key_padding_mask)
        B, d = memory.shape[0], memory.shape[-1]
        anchors = anchor_logits.sigmoid()
        if self.patterns is None:
            tgt = memory.new_zeros(B, anchors.shape[0], d)
        else:  # query p * Nq + q: pattern p with anchor q
            num_patterns = self.patterns.num_embeddings
            tgt = self.patterns.weight.repeat_interleave(anchors.shape[0], dim=0)[None].expand(B, -1, -1)
            anchors = anchors.repeat(num_patterns, 1)
        anchors = anchors[None].expand(B, -1, -1)
        query_blocks = None  # the decoder's default: one block of all queries
        if extra_queries is not None:
            extra_tgt, extra_anchors, extra_blocks = extra_queries
            query_blocks = [(1, tgt.shape[1], None), *extra_blocks]
            tgt, anchors = torch.cat([tgt, extra_tgt], 1), torch.cat([anchors, extra_anchors], 1)
        return self.decoder(tgt, memory, pos, key_padding_mask, anchors, bbox_embed, query_blocks)
