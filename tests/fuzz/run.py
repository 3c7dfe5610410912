"""Run one fuzz target of tests/fuzz/harnesses.py a fixed number of times.

    python -m tests.fuzz.run TARGET --runs N [--out DIR] [--artifacts DIR] [--max-len BYTES] [--seed S]

With atheris (coverage-guided libFuzzer): the kept corpus tests/fuzz/corpus/TARGET seeds the run, new inputs go
to --out (a scratch folder; the kept corpus is never written), crashes to --artifacts. Extra libFuzzer flags may
follow `--`. Without atheris (not installable on this Python or platform), the same target runs on random
mutations of the kept corpus (bit flips, byte runs, insertions, cuts, splices), same run count, same seed.

Prints `fuzz TARGET: N runs, C crashes, engine E` last; exits non-zero on a crash or a hang.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from pathlib import Path

CORPUS = Path(__file__).parent / "corpus"


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run")
    parser.add_argument("target", choices=["extract", "image"])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--out", help="folder for new corpus entries (default: none kept)")
    parser.add_argument("--artifacts", default=".", help="folder for crashing inputs")
    parser.add_argument("--max-len", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=20, help="seconds one input may take")
    if "--" in argv:
        cut = argv.index("--")
        return parser.parse_args(argv[:cut]), argv[cut + 1:]
    return parser.parse_args(argv), []


def run_atheris(atheris, args: argparse.Namespace, extra: list[str]) -> None:
    from tests.fuzz import harnesses

    with atheris.instrument_imports(include=[*harnesses.INSTRUMENTED[args.target]]):
        target = harnesses.TARGETS[args.target]
        target(b"")  # import what the target imports, inside the instrumentation

    def one(data: bytes) -> None:
        target(data)

    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    corpora = [str(CORPUS / args.target)]
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        corpora.insert(0, args.out)
    flags = [f"-runs={args.runs}", f"-seed={args.seed}", f"-max_len={args.max_len}", f"-timeout={args.timeout}",
             f"-artifact_prefix={artifacts}/", "-print_final_stats=1", *extra]
    atheris.Setup([sys.argv[0], *flags, *corpora], one)
    atheris.Fuzz()  # exits the process when done (status 0) or on a crash (non-zero)


def mutate(rng: random.Random, data: bytes, corpus: list[bytes], max_len: int) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.randrange(6)
        pos = rng.randrange(len(out) + 1)
        if kind == 0 and out:  # flip a bit
            out[pos % len(out)] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:  # set a byte to an interesting value
            out[pos % len(out)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x3C, 0x3E, 0x22, 0x28, 0x29, 0x2C))
        elif kind == 2:  # insert random bytes
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 3 and out:  # cut a run
            del out[pos:pos + rng.randint(1, 64)]
        elif kind == 4 and corpus:  # splice in a piece of another input
            other = rng.choice(corpus)
            start = rng.randrange(len(other) + 1)
            out[pos:pos] = other[start:start + rng.randint(1, 256)]
        elif kind == 5:  # truncate
            del out[pos:]
    return bytes(out[:max_len])


def run_mutations(args: argparse.Namespace) -> int:
    from tests.fuzz import harnesses

    target = harnesses.TARGETS[args.target]
    corpus = [p.read_bytes() for p in sorted((CORPUS / args.target).iterdir()) if p.is_file()] or [b""]
    rng = random.Random(args.seed)
    started = time.monotonic()
    for n in range(args.runs):
        data = corpus[n] if n < len(corpus) else mutate(rng, rng.choice(corpus), corpus, args.max_len)
        began = time.monotonic()
        try:
            target(data)
        except Exception:
            crash = Path(args.artifacts) / f"crash-{args.target}-{n}"
            crash.parent.mkdir(parents=True, exist_ok=True)
            crash.write_bytes(data)
            traceback.print_exc()
            print(f"fuzz {args.target}: {n + 1} runs, 1 crashes, engine mutations (input kept in {crash})")
            return 1
        if time.monotonic() - began > args.timeout:
            print(f"fuzz {args.target}: input {n} took over {args.timeout} s")
            return 1
    print(f"Done {args.runs} runs in {time.monotonic() - started:.0f} second(s)")
    print(f"fuzz {args.target}: {args.runs} runs, 0 crashes, engine mutations")
    return 0


def main(argv: list[str]) -> int:
    args, extra = _parse(argv)
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: running the harness on random mutations instead", file=sys.stderr)
        return run_mutations(args)
    run_atheris(atheris, args, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
