"""Structured output: the packed mask against an independent reading of the tokenizer, the device sampler's mask and
logit bias against NumPy on fresh random logits, and the engine loop (scripted runner) following grammars."""

from __future__ import annotations

import json
import re
from typing import Any

import jax
import numpy as np
import pytest
from fake_runner import VOCAB_SIZE, fake_engine, run_requests

from jllm.sampler import SamplingMode, TokenConstraints, build_sampling_metadata, no_constraints, sample
from jllm.sampling import SamplingParams
from jllm.sequence import Sequence
from jllm.structured_output import GrammarCompiler, StructuredOutputsParams, allowed_bitmask, fill_bitmask

CHOICES = ["hello world", "bye"]


def _bits(mask_row: np.ndarray, vocab: int) -> np.ndarray:
    return np.unpackbits(mask_row.view(np.uint8), bitorder="little")[:vocab].astype(bool)


@pytest.fixture(scope="module")
def engine():
    return fake_engine()


@pytest.fixture(scope="module")
def compiler(engine) -> GrammarCompiler:
    return engine.grammars


def _seq(params: SamplingParams, seq_id: int = 0) -> Sequence:
    return Sequence(seq_id, f"r{seq_id}", 0, [5, 6], params, 0.0, 0)


def test_choice_mask_allows_exactly_the_tokens_that_start_a_choice(compiler: GrammarCompiler, engine) -> None:
    matcher = compiler.matcher(StructuredOutputsParams(choice=CHOICES))
    mask = fill_bitmask([(1, matcher, None)], 3, VOCAB_SIZE)
    assert (mask[[0, 2]] == -1).all()  # other rows allow everything
    texts = [engine.tokenizer.decode([t]) for t in range(VOCAB_SIZE)]
    # independent: a token may start the output iff its text is a non-empty prefix of a choice
    expected = np.array([bool(t) and any(c.startswith(t) for c in CHOICES) for t in texts])
    np.testing.assert_array_equal(_bits(mask[1], VOCAB_SIZE), expected)
    assert expected.sum() >= 2


def _allowed_after(compiler: GrammarCompiler, engine, params: StructuredOutputsParams, text: str) -> set[str]:
    """The texts of the tokens the grammar allows after ``text``."""
    matcher = compiler.matcher(params)
    for token in engine.tokenizer.encode(text, add_special_tokens=False):
        assert not matcher.accept(token) and matcher.error is None
    mask = fill_bitmask([(0, matcher, None)], 1, VOCAB_SIZE)
    return {engine.tokenizer.decode([t]) for t in np.flatnonzero(_bits(mask[0], VOCAB_SIZE))}


def test_a_whitespace_pattern_is_json_s_only_whitespace(compiler: GrammarCompiler, engine) -> None:
    """vLLM's whitespace_pattern: compact JSON allows no whitespace after "{"; a pattern allows what it matches."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert _allowed_after(compiler, engine, StructuredOutputsParams(json=schema), "{") == {'"'}
    newline = StructuredOutputsParams(json=schema, whitespace_pattern=r"\n")
    assert _allowed_after(compiler, engine, newline, "{") == {'"', "\n"}
    spaces = StructuredOutputsParams(json_object=True, whitespace_pattern="[ ]*")
    assert " " in _allowed_after(compiler, engine, spaces, "{") - {"\n"}
    with pytest.raises(ValueError, match=r"structured_outputs.whitespace_pattern is invalid: .*invalid regex \"\(\""):
        StructuredOutputsParams(json=schema, whitespace_pattern="(")
    with pytest.raises(ValueError, match="whitespace_pattern must be a non-empty regex beside json, json_object"):
        StructuredOutputsParams(regex="a+", whitespace_pattern=" ")


CALL = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
TAG = {"structures": [{"begin": "<f=a>", "schema": CALL, "end": "</f>"}], "triggers": ["<f="]}


def test_a_structural_tag_frees_text_and_holds_json_after_its_trigger(compiler: GrammarCompiler, engine) -> None:
    """vLLM's structural tag: any text until the trigger; then the structure's begin, JSON of its schema (compact
    unless a whitespace pattern says otherwise) and its end; then free text again."""
    params = StructuredOutputsParams(structural_tag=TAG)
    free = _allowed_after(compiler, engine, params, "hi")
    assert {"<", "x", "{", " ", "\n"} <= free
    assert _allowed_after(compiler, engine, params, "hi <f=") == {"a"}
    assert _allowed_after(compiler, engine, params, "hi <f=a>") == {"{"}
    assert _allowed_after(compiler, engine, params, 'hi <f=a>{"n":12') == set("0123456789}")
    assert _allowed_after(compiler, engine, params, 'hi <f=a>{"n":12}') == {"<"}
    assert _allowed_after(compiler, engine, params, 'hi <f=a>{"n":12}</f> and') == free
    spaced = StructuredOutputsParams(structural_tag=json.dumps(TAG), whitespace_pattern="[ ]?")
    assert _allowed_after(compiler, engine, spaced, "<f=a>{") == {'"', " "}
    nullable = {**TAG, "structures": [{**TAG["structures"][0], "schema": {"type": "string", "nullable": True}}]}
    assert "n" in _allowed_after(compiler, engine, StructuredOutputsParams(structural_tag=nullable), "<f=a>")


FORMAT_CALL = {"type": "tag", "begin": "<f=a>", "content": {"type": "json_schema", "json_schema": CALL}, "end": "</f>"}


def test_xgrammars_format_tree_compiles_to_one_grammar(compiler: GrammarCompiler, engine) -> None:
    """xgrammar's format form: a sequence of a string and JSON; alternatives; a tag around free text that ends at
    its end string; triggered tags (free text, then a tag after its trigger) and separated tags; a grammar inside."""

    def allowed(fmt: dict[str, Any], text: str) -> set[str]:
        return _allowed_after(compiler, engine, StructuredOutputsParams(structural_tag={"format": fmt}), text)

    answer = {"type": "sequence", "elements": [{"type": "const_string", "value": "A:"}, FORMAT_CALL["content"]]}
    assert allowed(answer, "") == {"A"} and allowed(answer, "A:") == {"{"}
    either = {"type": "or", "elements": [{"type": "const_string", "value": "yes"}, {"type": "regex", "pattern": "n/o"}]}
    assert allowed(either, "") == {"y", "n"} and allowed(either, "n") == {"/"}
    think = {"type": "tag", "begin": "<t>", "content": {"type": "any_text", "excludes": ["zz"]}, "end": "</t>"}
    thought = {"type": "sequence", "elements": [think, {"type": "const_string", "value": "ok"}]}
    assert {"a", "<", "z"} <= allowed(thought, "<t>x") and allowed(thought, "<t>xz") == allowed(thought, "<t>x") - {"z"}
    assert allowed(thought, "<t>x</t>") == {"o"}  # the free text ended at its end string
    triggered = {"type": "triggered_tags", "triggers": ["<f="], "tags": [FORMAT_CALL]}
    assert {"h", "<", " "} <= allowed(triggered, "hi") and allowed(triggered, "hi <f=") == {"a"}
    assert allowed(triggered, 'hi <f=a>{"n":1') == set("0123456789}") and allowed(triggered, 'hi <f=a>{"n":1}') == {"<"}
    assert allowed({**triggered, "at_least_one": True, "stop_after_first": True}, "") == {"<"}
    listed = {"type": "tags_with_separator", "tags": [FORMAT_CALL], "separator": ",", "at_least_one": True}  # "": EOS
    assert allowed(listed, '<f=a>{"n":1}</f>') == {",", ""} and allowed(listed, '<f=a>{"n":1}</f>,') == {"<"}
    grammar = {"type": "sequence", "elements": [{"type": "grammar", "grammar": 'root ::= "ab" | "cd"'}, answer]}
    assert allowed(grammar, "") == {"a", "c"} and allowed(grammar, "cd") == {"A"}


def test_a_structural_tag_s_special_token_trigger_is_matched_as_that_token() -> None:
    """A trigger written <...> that is one special token of the tokenizer is that token in the grammar (what the
    model writes); any other trigger is text. The check asks the compiler."""
    tag = {**TAG, "triggers": ["<s>"], "structures": [{**TAG["structures"][0], "begin": "<s>call"}]}
    params = StructuredOutputsParams(structural_tag=tag)
    assert params.grammar_text() == params.grammar_text(lambda text: False)
    assert 'TAG_TEXT "<s>"' in params.grammar_text()
    assert 'TAG_TEXT <s> "call"' in params.grammar_text(lambda text: text == "<s>")


@pytest.mark.parametrize(
    "tag, message",
    [
        ({"format": {"type": "token", "token": "<x>"}}, "'token' formats are not supported"),
        ({"format": {"type": "triggered_tags", "triggers": ["<f"]}}, r"format \(triggered_tags\) misses \['tags'\]"),
        ({"format": {"type": "any_text", "max_tokens": 5}}, "max_tokens and max_chars are not supported"),
        ({"format": {"type": "json_schema", "json_schema": {}, "style": "qwen_xml"}}, "only style 'json'"),
        ({"format": {"type": "sequence", "elements": [{"type": "nope"}]}}, r"format.elements\[0\].type must be one of"),
        ({"structures": TAG["structures"]}, "triggers must be a non-empty list"),
        ({**TAG, "structures": []}, "structures must be a non-empty list"),
        ({**TAG, "triggers": ["<g"]}, r"structures\[0\].begin '<f=a>' starts with none of the triggers"),
        ({**TAG, "structures": [{"begin": "<f=a>", "schema": "{}", "end": ""}]}, r"structures\[0\].schema must be"),
        ({**TAG, "structures": [{"begin": "<f=a>", "schema": {}}]}, r"structures\[0\] takes exactly .* \['end'\]"),
        ({**TAG, "tags": []}, "'tags' is not a structural tag key"),
        ("[1]", "a structural tag is an object"),
        ("{oops", "key must be a string"),
        ({**TAG, "structures": [{"begin": "<f=a>", "schema": {"type": "nonsense"}, "end": ""}]}, "nonsense"),
    ],
)
def test_a_bad_structural_tag_is_refused_naming_the_key(tag: Any, message: str) -> None:
    with pytest.raises(ValueError, match=r"^structured_outputs\.structural_tag is invalid: .*" + message):
        SamplingParams(structured_outputs={"structural_tag": tag})


def test_allowed_token_ids_pack_into_their_bits() -> None:
    rng = np.random.default_rng(0)
    ids = rng.choice(1000, size=37, replace=False)
    np.testing.assert_array_equal(np.flatnonzero(_bits(allowed_bitmask(ids, 1000), 1000)), np.sort(ids))


def _random_mask(rng: np.random.Generator, rows: int, vocab: int) -> np.ndarray:
    allowed = rng.random((rows, vocab)) < 0.05
    allowed[np.arange(rows), rng.integers(vocab, size=rows)] = True  # never empty
    allowed[0] = True  # a row without a mask
    words = np.zeros((rows, -(-vocab // 32) * 32), bool)
    words[:, :vocab] = allowed
    return np.packbits(words, axis=1, bitorder="little").view(np.int32), allowed


def test_sampler_masks_and_biases_like_numpy(vocab: int = 1000) -> None:
    """Greedy rows take the argmax of the masked, biased logits; logprobs come from the masked logits (1e-5);
    drawing rows only ever draw allowed tokens."""
    rng = np.random.default_rng(vocab)
    rows = 6
    logits = rng.normal(size=(rows, vocab)).astype(np.float32) * 3
    bitmask, allowed = _random_mask(rng, rows, vocab)
    bias_ids = np.full((rows, 16), -1, np.int32)
    bias_values = np.zeros((rows, 16), np.float32)
    bias_ids[:, :3] = rng.integers(vocab, size=(rows, 3))
    bias_ids[:, 1] = bias_ids[:, 0] + 1 if vocab > 1 else 0  # distinct ids per row
    bias_ids[:, 2] = (bias_ids[:, 0] + 2) % vocab
    bias_values[:, :3] = rng.uniform(-100, 100, size=(rows, 3))
    constraints = TokenConstraints(bitmask, bias_ids, bias_values)
    params = [SamplingParams(temperature=0.0 if i % 2 else 1.0, seed=i) for i in range(rows)]
    meta = build_sampling_metadata(
        [_seq(p, i) for i, p in enumerate(params)],
        rows,
        with_penalties=False,
        penalty_width=0,
        max_banned=0,
        eos_token_ids=set(),
    )
    masked = np.where(allowed, logits, -np.inf)
    biased = masked.copy()
    for r in range(rows):
        biased[r, bias_ids[r, :3]] += bias_values[r, :3]
    out = jax.jit(sample, static_argnames=("num_top_logprobs", "mode"))(
        logits, meta, constraints, num_top_logprobs=0, mode=SamplingMode.RANDOM
    )
    tokens = np.asarray(out.token_ids)
    greedy = np.arange(rows) % 2 == 1
    np.testing.assert_array_equal(tokens[greedy], biased.argmax(axis=1)[greedy])
    assert allowed[np.arange(rows), tokens].all()
    lse = np.log(np.exp(masked - masked.max(1, keepdims=True)).sum(1)) + masked.max(1)
    np.testing.assert_allclose(np.asarray(out.logprobs), masked[np.arange(rows), tokens] - lse, rtol=1e-5, atol=1e-5)


def test_draws_stay_inside_the_mask() -> None:
    rng = np.random.default_rng(1)
    rows, vocab = 16, 300
    logits = rng.normal(size=(rows, vocab)).astype(np.float32)
    bitmask, allowed = _random_mask(rng, rows, vocab)
    seqs = [_seq(SamplingParams(temperature=1.5, top_p=0.9, seed=i), i) for i in range(rows)]
    meta = build_sampling_metadata(seqs, rows, with_penalties=False, penalty_width=0, max_banned=0, eos_token_ids=set())
    constraints = TokenConstraints(bitmask, *jax.tree.leaves(no_constraints(rows))[1:])
    sample_jit = jax.jit(sample, static_argnames=("num_top_logprobs", "mode"))
    out = sample_jit(logits, meta, constraints, num_top_logprobs=0, mode=SamplingMode.TRUNCATED)
    assert allowed[np.arange(rows), np.asarray(out.token_ids)].all()


def test_a_batch_without_constraints_compiles_to_the_unconstrained_sampler() -> None:
    """The no-op path: zero-width constraint arrays add nothing to the sampler's program."""
    rows, vocab = 4, 64
    logits = np.zeros((rows, vocab), np.float32)
    meta = build_sampling_metadata([], rows, with_penalties=False, penalty_width=0, max_banned=0, eos_token_ids=set())
    plain = jax.make_jaxpr(lambda x, m: sample(x, m, num_top_logprobs=0, mode=SamplingMode.GREEDY))(logits, meta)
    empty = jax.make_jaxpr(lambda x, m, c: sample(x, m, c, num_top_logprobs=0, mode=SamplingMode.GREEDY))(
        logits, meta, no_constraints(rows)
    )
    assert [e.primitive for e in plain.eqns] == [e.primitive for e in empty.eqns]


def test_bad_constraints_are_refused_naming_the_key() -> None:
    cases = [
        ({"regex": "("}, r"structured_outputs\.regex is invalid"),
        ({"json": {"type": "nonsense"}}, r"structured_outputs\.json is invalid"),
        ({"json": "{not json"}, r"structured_outputs\.json is invalid"),
        ({"grammar": "start: x"}, r"structured_outputs\.grammar is invalid"),
        ({"choice": []}, r"structured_outputs\.choice is invalid: choice must be a non-empty list"),
        ({"choice": ["a"], "regex": "a"}, r"structured_outputs must set exactly one"),
        ({"schema": {}}, r"structured_outputs: 'schema' is not supported"),
    ]
    for value, message in cases:
        with pytest.raises(ValueError, match=message):
            SamplingParams(structured_outputs=value)
    with pytest.raises(ValueError, match=r"^logit_bias must map to biases in \[-100, 100\]"):
        SamplingParams(logit_bias={"3": 100.5})
    with pytest.raises(ValueError, match=r"^allowed_token_ids must be a non-empty list"):
        SamplingParams(allowed_token_ids=[])
    assert SamplingParams(logit_bias={"3": -2}).logit_bias == {3: -2.0}
    assert SamplingParams(structured_outputs={"grammar": 'root ::= "a" | "b"'}).structured_outputs.kind == "grammar"


def test_engine_follows_grammars_beside_free_rows_and_ends_when_a_grammar_is_complete(engine) -> None:
    free = SamplingParams(max_tokens=6)
    requests = {
        "choice": ([5, 6, 7], SamplingParams(n=2, max_tokens=30, structured_outputs={"choice": CHOICES})),
        "regex": ([9], SamplingParams(max_tokens=30, structured_outputs={"regex": "[0-9]{3}x"})),
        "free": ([5, 6, 7], free),
        "allowed": ([8], SamplingParams(max_tokens=4, allowed_token_ids=[40, 41])),
    }
    done = run_requests(engine, requests)
    for c in done["choice"].outputs:
        assert c.text in CHOICES and c.finish_reason == "stop" and c.stop_reason is None
    regex = done["regex"].outputs[0]
    assert regex.finish_reason == "stop" and len(regex.text) == 4 and regex.text[:3].isdigit()
    alone = run_requests(
        engine, {"free-alone": ([5, 6, 7], free)}
    )  # the script's tokens, untouched by the others' masks
    assert done["free"].outputs[0].token_ids == alone["free-alone"].outputs[0].token_ids
    assert set(done["allowed"].outputs[0].token_ids) <= {40, 41}
    assert not engine.requests and engine.block_manager.num_allocated_pages == 0


@pytest.mark.parametrize("published", [False, True])
def test_a_grammar_steps_mask_waits_for_the_last_token_but_its_forward_does_not(published: bool) -> None:
    """Async scheduling keeps launching a grammar's step before the previous step's token is back: the runner
    queues the forward, then the engine takes that token (``before_sampling``) and the mask is filled. A published
    plan (multi-process) carries its mask, so there the engine takes the token before planning."""
    engine = fake_engine()
    if published:
        engine.publish = lambda plan: None
    deferred: list[bool] = []
    launch = engine.runner.launch

    def spy(output, plan, before_sampling=None):  # noqa: ANN001, ANN202 - the runner's own signature
        deferred.append(before_sampling is not None)
        return launch(output, plan, before_sampling)

    engine.runner.launch = spy
    done = run_requests(engine, {"r": ([9], SamplingParams(max_tokens=30, structured_outputs={"regex": "[0-9]{5}"}))})
    assert len(done["r"].outputs[0].text) == 5 and done["r"].outputs[0].text.isdigit()
    assert deferred[0] is False  # the prefill: nothing in flight
    assert all(d is not published for d in deferred[1:]) and len(deferred) >= 5


def test_grammars_survive_preemption() -> None:
    """A pool too small for every sequence at once: preempted grammar sequences recompute and go on where their
    matcher is (it consumed each token once)."""
    engine = fake_engine(num_pages=12, page_size=4, max_model_len=48)
    requests = {f"r{i}": ([9, i + 3], SamplingParams(max_tokens=30, structured_outputs={"regex": "[0-9]{20}"}))
                for i in range(4)}  # fmt: skip
    done = run_requests(engine, requests)
    assert engine.scheduler.num_preemptions > 0
    for output in done.values():
        assert output.outputs[0].finish_reason == "stop" and re.fullmatch("[0-9]{20}", output.outputs[0].text)


@pytest.mark.parametrize("regex", ["a{1000000}", "(a{1000}){1000}"])
def test_a_grammar_past_llguidance_limits_ends_its_own_request_alone(engine, regex: str) -> None:
    """Such a regex once held the engine thread ~0.5-1 s for its first mask (GRAMMAR_LIMITS bounds that, timed by
    scripts/bench_structured_output.py); here its request ends with an error inside the grammar and its neighbour
    runs on."""
    free = SamplingParams(max_tokens=6)
    done = run_requests(
        engine,
        {
            "hostile": ([9], SamplingParams(max_tokens=8, structured_outputs={"regex": regex})),
            "free": ([5, 6, 7], free),
        },
    )
    hostile = done["hostile"].outputs[0]
    assert hostile.text == "" and hostile.finish_reason == "error" and "too many expressions" in (hostile.error or "")
    alone = run_requests(engine, {"free-alone": ([5, 6, 7], free)})
    assert done["free"].outputs[0].token_ids == alone["free-alone"].outputs[0].token_ids
    assert not engine.requests and engine.block_manager.num_allocated_pages == 0


def test_openapi_nullable_lets_null_through(compiler: GrammarCompiler, engine) -> None:
    """The OpenAI Node SDK's zod helper (``zodResponseFormat``) writes ``.nullable()`` as OpenAPI's
    ``"nullable": true``; llguidance ignored the keyword, so a nullable field could never be null."""
    note = {"type": "string", "nullable": True}
    schema = {
        "type": "object",
        "properties": {"note": note, "kind": {"$ref": "#/$defs/kind"}},
        "required": ["note", "kind"],
        "additionalProperties": False,
        "$defs": {"kind": {"type": "string", "enum": ["a"], "nullable": True}},
    }
    for text in ('{"note":null,"kind":null}', '{"note":"x","kind":"a"}'):
        matcher = compiler.matcher(StructuredOutputsParams(json=schema)).matcher
        assert matcher.consume_tokens(engine.tokenizer.encode(text, add_special_tokens=False)), text
        assert matcher.is_accepting(), text
    strict = compiler.matcher(StructuredOutputsParams(json={**note, "nullable": False})).matcher
    assert not strict.consume_tokens(engine.tokenizer.encode("null", add_special_tokens=False))


def test_a_grammar_that_breaks_mid_generation_ends_every_sample_with_an_error(engine) -> None:
    """`a{1000000}` builds too many lexer expressions on its first `a`: the sequence used to end as "stop" with text
    that breaks the constraint (and a sibling, whose forked matcher broke with it, on the EOS its mask then
    allowed). Each sample now ends with finish reason "error" and the reason; the broken token is not output."""
    params = SamplingParams(n=2, temperature=1.0, max_tokens=8, structured_outputs={"regex": "[0-9]{3}a{1000000}"})
    done = run_requests(engine, {"broken": ([9], params)})
    for c in done["broken"].outputs:
        assert c.finish_reason == "error" and c.stop_reason is None, c
        assert "too many expressions constructed" in (c.error or "") and c.text.isdigit()
    assert done["broken"].outputs[0].text == "000"  # three digits followed the grammar; the `a` broke it
    assert not engine.requests and engine.block_manager.num_allocated_pages == 0
