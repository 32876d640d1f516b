"""Fine-tune a surrogate-trained CrossQ driver on the game (racerl_jax.finetune).

    python scripts/finetune_real.py --agent runs/crossq-<surrogate>-<time> [--run-dir DIR]
        [--game-mode lockstep|realtime] [--address tcp://127.0.0.1:5555] [--game-minutes 30]
        [--surrogate-ratio 0.5] [--critic-stats keep|reset] [--entropy keep|reset]

Writes config.json, checkpoints/, best_agent/, finetune.json, metrics.jsonl, steps.jsonl and
summary.json to the run dir. The last line printed is
clean_lap_rate=<f> mean_lap_s=<f> start_mean_lap_s=<f> baseline_lap_s=<f> game_minutes=<f>.

A spot interruption notice, SIGTERM or SIGINT (Windows: CTRL_BREAK, console close) checkpoints and
exits with status 75 (racerl_jax.spot.EXIT_INTERRUPTED); the same command resumes the run.
"""
from __future__ import annotations

import sys

from racerl_jax.finetune import main
from racerl_jax.spot import exit_code

if __name__ == "__main__":
    sys.exit(exit_code(main()["stop_reason"]))
