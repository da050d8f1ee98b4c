"""A GGUF file's tokenizer metadata rebuilt as a `tokenizers.Tokenizer`, the one transformers' GGUF loader builds.

A GGUF has no tokenizer.json: it stores the vocabulary, merges (or scores), token types and special ids under
`tokenizer.ggml.*`. Two kinds are read: byte-level BPE (`gpt2`: Llama 3, SmolLM2, Qwen) and SentencePiece BPE
(`llama`: Llama 2, Mistral, Phi-3, Gemma, whose merges are recovered from the scores or the token order), each
built the way transformers' `integrations/gguf/gguf_tokenizer_mapping.py` builds it, so the ids are the same.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types: special tokens like <|im_end|>; added ones like <think>
SUPPORTED_TOKENIZERS = ("gpt2", "llama")

# Each vocabulary was learned on text split by its regex (transformers' GGUF table, by `tokenizer.ggml.pre`);
# a value not here gets plain GPT-2 byte-level splitting, as in transformers. One is not transformers': BLOOM's
# (its tokenizer.json's, as llama.cpp splits `bloom` and `gpt3-finnish` files), which transformers' table lacks, so
# its GGUF tokenizer splits BLOOM text as GPT-2 (`don't` as `don` + `'t`) into ids the model never saw in training.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BLOOM_SPLIT = r" ?[^(\s|[.,!?…。，、।۔،])]+"
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(
        ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"],
        _LLAMA3_SPLIT,
    ),
    **dict.fromkeys(["dbrx", "smaug-bpe"], _LLAMA3_SPLIT),
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"], _QWEN2_SPLIT),
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], _GPT4O_SPLIT),
    **dict.fromkeys(["bloom", "gpt3-finnish"], _BLOOM_SPLIT),
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def build_tokenizer(meta: dict[str, Any], arch: str) -> Tokenizer:
    """The tokenizer the metadata describes; `arch` (the GGUF architecture) picks Gemma's and Phi-3's variants of
    SentencePiece, as transformers does."""
    kind = meta.get("tokenizer.ggml.model")
    if kind == "gpt2":
        tokenizer, byte_level = _byte_level(meta), True
    elif kind == "llama":
        tokenizer, byte_level = _sentencepiece(meta, arch), False
    else:
        raise NotImplementedError(
            f"GGUF tokenizer model {kind!r} is not supported (supported: {', '.join(map(repr, SUPPORTED_TOKENIZERS))})"
        )
    _add_special_tokens(tokenizer, meta, byte_level)
    split = PRE_TOKENIZER_SPLITS.get(meta.get("tokenizer.ggml.pre", ""))
    if split is not None:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.post_processor = _post_processor(meta)
    return tokenizer


def add_bos_token(meta: dict[str, Any]) -> bool:
    """The file's `add_bos_token`; a SentencePiece file that does not say gets a BOS (llama.cpp's default)."""
    default = meta.get("tokenizer.ggml.model") == "llama"
    return bool(meta.get("tokenizer.ggml.add_bos_token", default))


def _byte_level(meta: dict[str, Any]) -> Tokenizer:
    """transformers' `GPT2Tokenizer(vocab, merges)` backend, every token respelled in the byte alphabet."""
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode("utf-8")): i
        for i, tok in enumerate(meta["tokenizer.ggml.tokens"])
    }
    merges = [tuple(merge.split(" ")) for merge in meta["tokenizer.ggml.merges"]]
    bpe = models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    tokenizer = Tokenizer(bpe)
    # `tokenizer.ggml.add_space_prefix` is not read: transformers builds GPT-2's tokenizer without a prefix space
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece(meta: dict[str, Any], arch: str) -> Tokenizer:
    """transformers' `LlamaTokenizer` / `GemmaTokenizer` backends from a SentencePiece BPE vocabulary.

    Gemma files spell a token of spaces with real spaces and list no merges, whose order is the token order (not
    the scores); others recover missing merges from the scores.
    """
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    gemma = arch in ("gemma", "gemma2", "gemma3")
    if gemma:
        tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {token: i for i, token in enumerate(tokens)}
    if "tokenizer.ggml.merges" in meta:
        merges = [tuple(merge.split(" ")) for merge in meta["tokenizer.ggml.merges"]]
    elif gemma:
        merges = _merges_from_scores(vocab, {token: -i for i, token in enumerate(tokens)})
    else:
        merges = _merges_from_scores(vocab, dict(zip(tokens, meta["tokenizer.ggml.scores"], strict=False)))
    if gemma:
        bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=True, unk_token="<unk>", byte_fallback=True)
        tokenizer = Tokenizer(bpe)
        tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
        tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
        tokenizer.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
        return tokenizer
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    if arch == "phi3":  # the prefix space from a normalizer, not the pre-tokenizer (transformers' `phi3_tokenizer`)
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        tokenizer.pre_tokenizer = None
    return tokenizer


def _merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Every split of a token into two tokens, best score first (transformers' `generate_merges`)."""
    merges = []
    for merge, score in scores.items():
        local = [
            (merge[:i], merge[i:], score) for i in range(1, len(merge)) if merge[:i] in vocab and merge[i:] in vocab
        ]
        merges.extend(sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]])))
    merges.sort(key=lambda val: (val[2], len(val[0]), len(val[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _add_special_tokens(tokenizer: Tokenizer, meta: dict[str, Any], byte_level: bool) -> None:
    """Control tokens as special tokens, user-defined ones (`<think>`) as plain added tokens, both matched whole.

    In a byte-level vocabulary a control token spelled outside the byte alphabet is a llama.cpp mislabel;
    transformers skips those too."""
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or []
    alphabet = set(bytes_to_unicode().values())
    control = [
        t for t, k in zip(tokens, types, strict=False) if k == _CONTROL and (not byte_level or set(t) <= alphabet)
    ]
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    vocab = tokenizer.get_vocab()
    user = [t for t, k in zip(tokens, types, strict=False) if k == _USER_DEFINED and t in vocab]
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])


def _post_processor(meta: dict[str, Any]) -> processors.TemplateProcessing:
    """BOS/EOS insertion as the file asks, in the template form transformers writes."""
    tokens = meta["tokenizer.ggml.tokens"]
    bos_id, eos_id = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    bos = tokens[bos_id] if add_bos_token(meta) and bos_id is not None else None
    eos = tokens[eos_id] if meta.get("tokenizer.ggml.add_eos_token", False) and eos_id is not None else None

    single = " ".join(f"{p}:0" for p in (bos, "$A", eos) if p is not None)
    pair = single + " " + " ".join(f"{p}:1" for p in (bos, "$B", eos) if p is not None)
    special = [(tok, i) for tok, i in ((bos, bos_id), (eos, eos_id)) if tok is not None]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def tokenizer_config(meta: dict[str, Any], model_max_length: int) -> dict[str, Any]:
    """tokenizer_config.json: the special tokens, BOS/EOS flags and chat template the file carries."""
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key: str) -> str | None:
        token_id = meta.get(f"tokenizer.ggml.{key}")
        return tokens[token_id] if token_id is not None else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "pad_token": token("padding_token_id"),
        "unk_token": token("unknown_token_id"),
        "add_bos_token": add_bos_token(meta),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return config
