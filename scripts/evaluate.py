"""Evaluate a saved agent: N laps of its deterministic policy from the start line, on the surrogate
or on the game, with the baseline driver and the minimum-lap-time reference in the same report.

    python scripts/evaluate.py --agent runs/crossq-.../best_agent --laps 5
    python scripts/evaluate.py --agent runs/crossq-... --laps 5 --backend real [--mode lockstep|realtime]
        [--address tcp://127.0.0.1:5555] [--out DIR]

``--agent``: a run dir (its best agent, else its last checkpoint), its ``best_agent/`` or
``checkpoints/``, or one step under either. The agent's settings (pedals, car model, surrogate file,
control period) come from the run's config.json. Writes report.json, agent_lap.png,
baseline_lap.png and lap_times.png to ``--out`` (default: a new eval-<backend>-<time>/ in the run
dir). The last line printed is
clean_lap_rate=<f> mean_lap_s=<f> best_lap_s=<f> limit_s=<f> gap_pct=<f> (nan where no clean lap).
"""
from __future__ import annotations

import sys

from racerl_jax.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
