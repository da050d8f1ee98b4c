"""Per-token cost of stop strings: the detokenizers of one request with many long stop strings, fed token by token.

Measures what one engine step spends on a request's text (issue 23: 1,000 stop strings of 1,000 characters with n=8
stalled every other stream). Prints a table and, with ``--json``, writes the figures.

    python scripts/bench_stop_strings.py --stops 1000 --stop-chars 1000 --n 8 --tokens 200
"""

from __future__ import annotations

import argparse
import json
import random
import string
import time
from pathlib import Path

from jllm.tokenizer import IncrementalDetokenizer, Tokenizer

TOKENIZER = Path(__file__).resolve().parents[1] / "configs" / "models" / "tiny-llama"


def measure(num_stops: int, stop_chars: int, n: int, num_tokens: int, seed: int = 0) -> dict[str, float]:
    """Seconds per generated token (all ``n`` samples' detokenizers) with stops that never match the text."""
    rng = random.Random(seed)
    tokenizer = Tokenizer.from_pretrained(TOKENIZER)
    stops = ["".join(rng.choices(string.ascii_letters, k=stop_chars)) + "\x00" for _ in range(num_stops)]
    samples = [IncrementalDetokenizer(tokenizer, [1], stop=stops) for _ in range(n)]
    words = [w for w in ("the quick brown fox jumps over a lazy dog while rain falls softly on old roofs").split()]
    text = " ".join(rng.choice(words) for _ in range(num_tokens))
    tokens = tokenizer.encode(text, add_special_tokens=False)[:num_tokens]
    start = time.perf_counter()
    for token in tokens:
        for detok in samples:
            detok.add_tokens([token])
    seconds = time.perf_counter() - start
    text_chars = len(samples[0].text)
    return {"seconds_per_token": seconds / num_tokens, "text_chars": text_chars, "total_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stops", type=int, default=1000)
    parser.add_argument("--stop-chars", type=int, default=1000)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    result = measure(args.stops, args.stop_chars, args.n, args.tokens)
    print("| stops | chars each | n | tokens | text chars | ms per token (all samples) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(
        f"| {args.stops} | {args.stop_chars} | {args.n} | {args.tokens} | {result['text_chars']} | "
        f"{result['seconds_per_token'] * 1e3:.3f} |"
    )
    if args.json:
        args.json.write_text(json.dumps({**vars(args), "json": None, **result}, indent=1))


if __name__ == "__main__":
    main()
