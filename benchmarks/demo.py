"""The demo's bar, seed by seed: does GRPO with the search rollout really teach the tiny model?

    .venv/bin/python benchmarks/demo.py                      # seeds 0, 1, 2
    .venv/bin/python benchmarks/demo.py --seeds 5 --first-seed 10 --output-dir outputs/demo-bench

Each seed runs the whole `research-r1 demo` (world, index, tiny model, cold-start SFT, GRPO
through research_r1.training.train, greedy evaluation) in OUTPUT_DIR/seed-N and is held to the
project's bar:

- held-out exact match after GRPO at least 30 points above the cold-start (SFT-only) model's;
- at least 300 held-out questions (people never seen in training);
- the run takes at most 10 minutes (wall clock, this machine; a shared CPU makes it noisy).

It prints a table per seed (by question kind), then one line per seed with PASS or FAIL, and
writes everything measured to OUTPUT_DIR/bench.json. The exit status is 1 when any seed fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from research_r1 import kernels

kernels.pin()  # before anything computes with torch, as `research-r1 demo` pins before its imports

from research_r1 import outputs  # noqa: E402
from research_r1.demo import Settings, print_seeds, run_one  # noqa: E402

MIN_GAIN_POINTS = 30.0
MIN_HELD_OUT = 300
MAX_MINUTES = 10.0


def verdict(result: dict) -> tuple[bool, str]:
    gain = (result["grpo"]["em"] - result["sft"]["em"]) * 100
    minutes = result["seconds"]["total"] / 60
    checks = {
        f"gain {gain:+.1f} >= {MIN_GAIN_POINTS:.0f} pts": gain >= MIN_GAIN_POINTS,
        f"{result['held_out_questions']} >= {MIN_HELD_OUT} held-out": result["held_out_questions"]
        >= MIN_HELD_OUT,
        f"{minutes:.1f} <= {MAX_MINUTES:.0f} min": minutes <= MAX_MINUTES,
    }
    failed = [name for name, ok in checks.items() if not ok]
    return not failed, "; ".join(failed or checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=outputs.output_dir("demo-bench"))
    parser.add_argument("--steps", type=int, help="GRPO steps (default: the recipe's)")
    args = parser.parse_args()

    settings = Settings()
    in_force = kernels.in_force()
    results = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        out = args.output_dir / f"seed-{seed}"
        results.append(run_one(out, seed, settings, args.steps, in_force))
    print_seeds(results)
    passed = True
    for result in results:
        ok, detail = verdict(result)
        passed &= ok
        print(f"seed {result['seed']}: {'PASS' if ok else 'FAIL'} ({detail})")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
