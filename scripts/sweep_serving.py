"""Serving sweep: ``bench_serving.py`` at several concurrencies and request rates against one running ``jllm serve``,
then two plots (matplotlib PNGs) of how the server behaves under load.

- ``serving_vs_concurrency.png``: output throughput, and median TTFT and TPOT, against ``--max-concurrency`` (all
  requests arrive at once, at most that many in flight);
- ``serving_vs_request_rate.png``: TTFT and TPOT percentiles (p50, p90, p99) against the request rate (Poisson
  arrivals, or gamma with ``--burstiness``; no concurrency cap).

Every point is one ``bench_serving.py`` run, so its definitions (vLLM's ``bench serve``) hold; every option this
script does not know (``--base-url``, ``--num-prompts``, ``--input-len`` ...) goes to each of those runs as it is.
Point ``i`` draws its prompts with seed ``--seed + i``: with one seed for all, every point after the first would find
its prompts in the server's prefix cache and time cached prefills.
The JSON keeps each point's summary (no per-request lists). Needs matplotlib (the ``bench`` extra).

    jllm serve --config configs/llama3-8b-h200.yaml &
    python scripts/sweep_serving.py --concurrencies 1,8,32,64,128 --request-rates 4,8,16,32 --num-prompts 256 \\
        --input-len 128 --output-len 128 --max-token-id 128 --out-dir docs/img --json sweep.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import bench_serving

PER_REQUEST = ("input_lens", "output_lens", "ttfts", "e2els", "itls", "errors")  # left out of a point's summary
PERCENTILES = ("median", "p90", "p99")
# bench_serving.py options the sweep defaults to (smaller than one run's, as a sweep makes many runs); given ones win
SWEEP_DEFAULTS = ["--num-prompts", "256", "--input-len", "128", "--output-len", "128"]


def numbers(text: str, kind: type) -> list:
    values = [kind(x) for x in text.split(",") if x]
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of positive numbers, got {text!r}")
    return values


def run_point(common: list[str], extra: list[str]) -> dict[str, Any]:
    result = bench_serving.main(common + extra)
    summary = {k: v for k, v in result.items() if k not in PER_REQUEST}
    return summary | {"num_errors": len(result["errors"])}


def sweep(args: argparse.Namespace, common: list[str]) -> dict[str, Any]:
    """``common``: the bench_serving.py options every point shares; each point its own seed (fresh prompts)."""
    points = [["--max-concurrency", str(c)] for c in args.concurrencies]
    points += [["--request-rate", str(r)] for r in args.request_rates]
    results = [run_point(common, extra + ["--seed", str(args.seed + i)]) for i, extra in enumerate(points)]
    return {
        "title": args.title,
        "concurrency": results[: len(args.concurrencies)],
        "request_rate": results[len(args.concurrencies) :],
    }


def plot(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """The two PNGs; each title names the machine, model, lengths and date of the runs."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    first = (result["concurrency"] or result["request_rate"])[0]
    title = (f"{result['title'] or first['model_id']}: {first['input_len']} in / {first['output_len']} out, "
             f"{first['num_prompts']} requests\n{first['machine']}, {first['date'][:10]}")  # fmt: skip
    paths = []

    points = result["concurrency"]
    if points:
        x = [p["max_concurrency"] for p in points]
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        left.plot(x, [p["output_throughput"] for p in points], "o-")
        left.set(xlabel="max concurrency", ylabel="output tokens/s", xscale="log", title="throughput")
        for key in ("ttft", "tpot"):
            right.plot(x, [p[f"median_{key}_ms"] for p in points], "o-", label=f"median {key.upper()}")
        right.set(xlabel="max concurrency", ylabel="ms", xscale="log", yscale="log", title="latency")
        right.legend()
        _label_ticks((left, right), x)
        paths.append(_save(fig, title, out_dir / "serving_vs_concurrency.png"))

    points = result["request_rate"]
    if points:
        x = [p["request_rate"] for p in points]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, key in zip(axes, ("ttft", "tpot"), strict=True):
            for pct in PERCENTILES:
                ax.plot(x, [p[f"{pct}_{key}_ms"] for p in points], "o-", label=pct.replace("median", "p50"))
            ax.set(xlabel="request rate (req/s)", ylabel="ms", xscale="log", title=key.upper())
            ax.legend()
        _label_ticks(axes, x)
        paths.append(_save(fig, title, out_dir / "serving_vs_request_rate.png"))
    return paths


def _label_ticks(axes: Any, x: list[float]) -> None:
    """Ticks at the measured points, written plainly (a log axis would print 2x10^0)."""
    from matplotlib.ticker import NullLocator

    for ax in axes:
        ax.set_xticks(x, [f"{v:g}" for v in x])
        ax.xaxis.set_minor_locator(NullLocator())  # the log y axes keep theirs


def _save(fig: Any, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: --request-rate, bench_serving's, must not be taken for --request-rates.
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"Other options go to bench_serving.py; unless given: {' '.join(SWEEP_DEFAULTS)}.",
        allow_abbrev=False,
    )
    parser.add_argument("--concurrencies", type=lambda s: numbers(s, int), default=[1, 8, 32, 64, 128],
                        help="comma-separated --max-concurrency values (default 1,8,32,64,128)")  # fmt: skip
    parser.add_argument("--request-rates", type=lambda s: numbers(s, float), default=[4.0, 8.0, 16.0, 32.0],
                        help="comma-separated requests/s (default 4,8,16,32)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0,
                        help="the first point's prompt seed; point i uses seed + i (default 0)")  # fmt: skip
    parser.add_argument("--title", default="", help="the plots' title (default: the served model's name)")
    parser.add_argument("--out-dir", type=Path, default=Path("."), help="where the PNGs go (default: here)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every point's summary here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, common = build_parser().parse_known_args(argv)
    result = sweep(args, SWEEP_DEFAULTS + common)  # argparse keeps an option's last value
    result["plots"] = [str(p) for p in plot(result, args.out_dir)]
    print("\n| max concurrency | output tok/s | median TTFT ms | median TPOT ms |\n| --- | --- | --- | --- |")
    for p in result["concurrency"]:
        print(f"| {p['max_concurrency']} | {p['output_throughput']:.1f} | {p['median_ttft_ms']:.1f} | "
              f"{p['median_tpot_ms']:.2f} |")  # fmt: skip
    print("\n| request rate | output tok/s | TTFT p50 / p90 / p99 ms | TPOT p50 / p90 / p99 ms |")
    print("| --- | --- | --- | --- |")
    for p in result["request_rate"]:
        ttft = " / ".join(f"{p[f'{q}_ttft_ms']:.1f}" for q in PERCENTILES)
        tpot = " / ".join(f"{p[f'{q}_tpot_ms']:.2f}" for q in PERCENTILES)
        print(f"| {p['request_rate']} | {p['output_throughput']:.1f} | {ttft} | {tpot} |")
    print("plots: " + ", ".join(result["plots"]), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
