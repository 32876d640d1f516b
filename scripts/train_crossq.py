"""Train the CrossQ driver on the surrogate racing env (the real-game backend comes with finetune_real.py).

    python scripts/train_crossq.py --backend surrogate [--track flowing|oval|technical|PATH.csv | --surrogate FILE.json]
        [--num-envs 32] [--budget-minutes 20] [--run-dir DIR] [--resume] [--seed 0] [--preset cpu|paper]
        [--updates-per-iter 16] [--batch-size N]

Writes config.json (the agent's config and the command's settings), checkpoints/, metrics.jsonl, tensorboard/, learning_curve.png,
best_lap.png and summary.json to the run dir. The last line printed is
first_clean_lap_min=<min> best_lap_s=<s> limit_s=<s> gap_pct=<%>.

A spot interruption notice, SIGTERM or SIGINT (Windows: CTRL_BREAK, console close) checkpoints and
exits with status 75 (racerl_jax.spot.EXIT_INTERRUPTED); the same command with --resume continues.
"""
from __future__ import annotations

import time

T_START = time.monotonic()  # before the imports: the budget and the first-lap time count them

import sys  # noqa: E402

from racerl_jax.spot import exit_code  # noqa: E402
from racerl_jax.train_racing import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(exit_code(main(t_start=T_START)["stop_reason"]))
