"""A checkpoint's tensors that nothing read: an error at load, unless the family skips them on purpose.

The loader reads each parameter's tensors by name (``jllm.safetensors_index``), so a tensor no parameter names is
never looked at. That hid real defects: a misread config key (``attention_bias``, ``n_shared_experts``) built a model
without the parameters for the checkpoint's bias or shared-expert tensors, and it ran with wrong logits and no error.
As vLLM's loaders (a name with no parameter is an error there, but for each model's known skips: its
``AutoWeightsLoader`` ``skip_prefixes`` / ``ignore_unexpected_prefixes``), every tensor left unread is an error
naming them, unless it matches an extra skipped on purpose: the shared ones below, or the family's own
(``WeightMap.skipped``), each with its reason.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from jllm.kv_scales import KV_SCALE_NAMES

# (pattern searched in a stored tensor's name as ours spell it, after WeightMap.aliases; why it is not read), for
# every family
SHARED_SKIPPED = (
    (r"(^|\.)(inv_freq|rotary_emb\.(cos|sin)_cached)$", "rotary buffers: recomputed from the config"),
    (
        r"(^|\.)(attn|attention)(\.attention)?\.(masked_bias|bias|causal_mask)$",
        "causal-mask buffers older transformers saved (GPT-2, GPT-J, GPT-Neo, GPT-NeoX, CodeGen): the mask is built "
        "per step",
    ),
    (r"(^|\.)mtp(_layers)?\.", "multi-token prediction layers: speculative heads, not served"),
    (
        rf"\.({'|'.join(sorted({re.escape(n) for names in KV_SCALE_NAMES.values() for n in names}))})$",
        "a KV-cache scale under a second of vLLM's names: the first one stored is read (jllm.kv_scales)",
    ),
    (r"\.(q_scale|prob_scale)$", "FP8 attention's query and probability scales: jllm's attention quantizes neither"),
)
# with a tied head, as vLLM's loaders skip it (some checkpoints store the embeddings' copy)
TIED_HEAD_SKIPPED = ((r"(^|\.)lm_head\.weight$", "a tied LM head's stored copy: the embeddings are the head"),)
# config keys that count multi-token prediction (next-n) layers stored past the decoder's: with one of them, the
# layers numbered from num_hidden_layers on are skipped too (DeepSeek-V3's, GLM-4.5's next-n layers: speculative
# heads, not served)
MTP_KEYS = ("num_nextn_predict_layers", "mtp_num_hidden_layers", "num_mtp_layers", "n_mtp_layers", "mtp_num_layers")
LAYER = re.compile(r"(^|\.)layers\.(\d+)\.")
SHOWN = 10  # unread names an error shows


class UnreadTensorsError(ValueError):
    """Checkpoint tensors that no parameter read and no family declared skipped."""


def mtp_layers(cfg: dict[str, Any]) -> int:
    """How many multi-token prediction layers the config declares (its text config's too)."""
    configs = [cfg, cfg.get("text_config") or {}]
    return max((int(c.get(k) or 0) for c in configs for k in MTP_KEYS), default=0)


def _skipped(name: str, patterns: Iterable[tuple[str, str]], first_extra_layer: int | None) -> bool:
    if any(re.search(pattern, name) for pattern, _ in patterns):
        return True
    layer = LAYER.search(name)
    return first_extra_layer is not None and layer is not None and int(layer.group(2)) >= first_extra_layer


def unexpected(
    unread: Mapping[str, str],
    family_skipped: Iterable[tuple[str, str]],
    cfg: dict[str, Any],
    num_layers: int,
    tied_head: bool = False,
) -> list[str]:
    """The unread tensors (stored name -> ours, ``SafetensorsIndex.unread``) that no shared or family pattern skips,
    each pattern searched in our spelling of the name (a text-only load's patterns name the text model's place);
    with multi-token prediction layers declared (``MTP_KEYS``), layers numbered from the config's
    ``num_hidden_layers`` (else ``num_layers``) on are skipped too."""
    patterns = [*SHARED_SKIPPED, *family_skipped, *(TIED_HEAD_SKIPPED if tied_head else ())]
    extra_layer = None
    if mtp_layers(cfg) > 0:
        extra_layer = int((cfg.get("text_config") or cfg).get("num_hidden_layers") or num_layers)
    return sorted(name for name, ours in unread.items() if not _skipped(ours, patterns, extra_layer))


def check_all_read(
    unread: Mapping[str, str],
    family_skipped: Iterable[tuple[str, str]],
    cfg: dict[str, Any],
    num_layers: int,
    tied_head: bool = False,
) -> None:
    """Raises ``UnreadTensorsError`` naming up to ``SHOWN`` unexpected unread tensors, their count and the
    architecture."""
    names = unexpected(unread, family_skipped, cfg, num_layers, tied_head)
    if not names:
        return
    arch = ", ".join(cfg.get("architectures") or []) or "(no architectures)"
    shown = ", ".join(names[:SHOWN]) + (f", ... ({len(names) - SHOWN} more)" if len(names) > SHOWN else "")
    raise UnreadTensorsError(
        f"{len(names)} checkpoint tensor(s) of {arch} (model_type {cfg.get('model_type')!r}) were never read: "
        f"{shown}. This usually means a config key was misread, so the model was built without the parameters "
        "these tensors hold (a bias, a shared expert, a norm) and would run with wrong logits; if the family "
        "leaves them out on purpose, declare them in its WeightMap.skipped with the reason"
    )
