"""Renaming state dicts between naming schemes: rules of (our name, their name) prefix templates
whose {i}-style placeholders match a number, applied to whole dotted components in either direction."""

import re

import torch

_PLACEHOLDER = re.compile(r"\{(\w)\}")


def _prefix_pattern(template):
    """'a.{i}.b{k}.' -> a regex matching that prefix, one named group per placeholder."""
    parts = _PLACEHOLDER.split(template)  # literal, name, literal, name, ...
    pattern = "".join(re.escape(p) if n % 2 == 0 else rf"(?P<{p}>\d+)" for n, p in enumerate(parts))
    return re.compile("^" + pattern)


def rename(state, rules, to_ours, offsets=None):
    """Rename each key by the first rule whose source side matches a prefix of it (unmatched
    keys pass unchanged). offsets: {placeholder: n} where our number = theirs + n."""
    offsets = offsets or {}
    sign = 1 if to_ours else -1
    out = {}
    for key, tensor in state.items():
        for ours, theirs in rules:
            source, target = (theirs, ours) if to_ours else (ours, theirs)
            m = _prefix_pattern(source).match(key)
            if m:
                values = {name: int(v) + sign * offsets.get(name, 0) for name, v in m.groupdict().items()}
                key = _PLACEHOLDER.sub(lambda p, values=values: str(values[p.group(1)]), target) + key[m.end():]
                break
        out[key] = tensor
    return out


# --- formats -> ours --------------------------------------------------------------------------


def drop_shared_box_head(state, decoder_prefix, head_prefix):
    """The decoder's copy of the box head: checked equal to the head, then dropped (ours shares one)."""
    out = {}
    for key, tensor in state.items():
        if key.startswith(decoder_prefix):
            head_key = head_prefix + key[len(decoder_prefix):]
            if head_key in state and not torch.equal(state[head_key], tensor):
                raise ValueError(f"{key} differs from {head_key}: a decoder box head separate from the prediction "
                                 "head (bbox_embed_diff_each_layer) is not supported")
            continue
        out[key] = tensor
    return out
