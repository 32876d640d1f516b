"""Does a driver trained on the fitted surrogate drive the game? The whole pipeline on the reference
game (Gymnasium's CarRacing through the bridge, lockstep), each stage the user's own command:

1. ``record_telemetry.py --policy probe --minutes M``   (the probe needs no car model)
2. ``train_surrogate.py RUN --out FIT``
3. ``train_crossq.py --backend surrogate --surrogate FIT/surrogate.json --budget-minutes T``
4. ``evaluate.py --agent TRAIN --laps N --backend real`` (zero-shot on the game) and the same N laps
   in the surrogate (``--backend surrogate``).
With ``--rounds R`` (R > 1) the driver of each round but the last drives the game for the recorder
(``record_telemetry.py --policy agent --minutes A``), the fit is redone on every recording so far and
a fresh driver trained on it: the loop that brings the fit to where the driver goes. Each round's
driver is evaluated on the game (``round<r>/eval-real``); the last line is the last round's.
With ``--control`` (the default) a second agent is trained the same way on the default car on the
game's own track (no fit) and driven on the game too: the fit's worth is the difference.

    python benchmarks/sim_to_real.py [--record-minutes 10] [--train-minutes 20] [--laps 10] [--no-control]
                                     [--rounds 2 --agent-minutes 5]

Writes everything under ``--out`` (default runs/sim_to_real-<time>/) and ends with
``game_clean_lap_rate=<f> game_mean_lap_s=<f> surrogate_mean_lap_s=<f> transfer_gap_pct=<f> baseline_game_lap_s=<f>
agree_m=<f> agree_time_gap_pct=<f> agree_speed_diff_mps=<f>`` (plus ``control_game_clean_lap_rate=<f>
control_game_mean_lap_s=<f>`` with the control). The ``agree_`` figures compare the driver's first drive
on the game with its first in the surrogate up to where the shorter ended (``racerl_jax.transfer``,
plotted in ``transfer.png``): the distance, the game's extra time over it, the mean speed difference;
they measure the fit before the driver laps. Lap times
are means over clean laps; CarRacing ends an episode at the line, so its laps start from rest, and
the surrogate's mean is taken over its laps from rest too where it drove any.
"""
from __future__ import annotations

import argparse
import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage(name: str, cmd: list[str], log: Path) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
    with log.open("w") as f:
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    tail = log.read_text().strip().splitlines()[-1:] or [""]
    print(f"    -> {tail[0]}", flush=True)
    if r.returncode != 0:
        raise SystemExit(f"{name} failed (exit {r.returncode}); see {log}")


def mean_clean(report: dict, who: str, start: str | None = None) -> float:
    laps = [lap for lap in report[who]["laps"] if lap.get("clean") and lap.get("time_s") is not None
            and (start is None or lap.get("start") == start)]
    return sum(lap["time_s"] for lap in laps) / len(laps) if laps else math.nan


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record-minutes", type=float, default=10.0, help="game time recorded with the probe")
    ap.add_argument("--train-minutes", type=float, default=20.0, help="wall-clock budget of each training run")
    ap.add_argument("--laps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-control", action="store_true", help="skip the unfitted default-car control")
    ap.add_argument("--rounds", type=int, default=1,
                    help="fit-train rounds; each round but the last records its driver on the game for the next fit")
    ap.add_argument("--agent-minutes", type=float, default=5.0, help="game time recorded with each round's driver")
    ap.add_argument("--out", default="", help="default runs/sim_to_real-<time>")
    ap.add_argument("--fit-args", default="", help="extra train_surrogate.py options, e.g. '--grip-tolerance 0.05'")
    # A stop on the track costs what leaving it does: with the default (0) a driver of CarRacing's fitted
    # car learned to stop before a hairpin it could not yet take (docs/experiments.md, session 12).
    ap.add_argument("--train-args", default="--reward stuck=5",
                    help="train_crossq.py options (default: --reward stuck=5), e.g. '--num-envs 8' for a test")
    a = ap.parse_args(argv)
    out = Path(a.out or f"runs/sim_to_real-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    game = subprocess.Popen([PY, "-m", "bridge.games.carracing", "--mode", "lockstep", "--address", address],
                            cwd=ROOT, stdout=(out / "game.log").open("w"), stderr=subprocess.STDOUT)
    extra = a.train_args.split()
    try:
        time.sleep(2.0)
        rec = out / "rec"
        stage("record", [PY, "scripts/record_telemetry.py", "--policy", "probe", "--address", address, "--dt", "0.04",
                         "--minutes", str(a.record_minutes), "--same-seed", "--seed", "0", "--run-dir", str(rec),
                         "--quiet"], out / "record.log")
        recordings = [rec]
        rounds = []
        for r in range(1, a.rounds + 1):
            # round 1 keeps the single-round layout (out/fit, out/train)
            base = out if r == 1 else out / f"round{r}"
            base.mkdir(exist_ok=True)
            fit, train = base / "fit", base / "train"
            stage(f"fit (round {r})", [PY, "scripts/train_surrogate.py", *map(str, recordings), "--out", str(fit),
                                       "--no-progress", *a.fit_args.split()], base / "fit.log")
            stage(f"train (round {r})", [PY, "scripts/train_crossq.py", "--backend", "surrogate", "--surrogate",
                                         str(fit / "surrogate.json"), "--budget-minutes", str(a.train_minutes),
                                         "--run-dir", str(train), "--seed", str(a.seed), "--no-progress", *extra],
                  base / "train.log")
            if r < a.rounds:  # the last round's driver is evaluated below
                where = base / "eval-real" if r > 1 else out / "round1-eval-real"
                stage(f"evaluate round {r} on the game",
                      [PY, "scripts/evaluate.py", "--agent", str(train), "--laps", str(a.laps), "--backend", "real",
                       "--address", address, "--game-seed", "0", "--out", str(where), "--no-progress"],
                      base / "eval-real-round.log")
                rounds.append(json.loads((where / "report.json").read_text()))
                agent_rec = out / f"rec-agent{r}"
                stage(f"record the round-{r} driver", [PY, "scripts/record_telemetry.py", "--policy", "agent",
                                                       "--agent", str(train), "--address", address,
                                                       "--minutes", str(a.agent_minutes), "--same-seed", "--seed", "0",
                                                       "--run-dir", str(agent_rec), "--quiet"],
                      out / f"record-agent{r}.log")
                recordings.append(agent_rec)
        for r, rep_r in enumerate(rounds, 1):
            print(f"round {r}: game clean_lap_rate={rep_r['agent']['clean_lap_rate']:.2f} "
                  f"mean_lap_s={mean_clean(rep_r, 'agent'):.2f}", flush=True)
        reports = {}
        for backend in ("real", "surrogate"):
            where = out / f"eval-{backend}"
            cmd = [PY, "scripts/evaluate.py", "--agent", str(train), "--laps", str(a.laps), "--backend", backend,
                   "--out", str(where), "--no-progress"]
            if backend == "real":
                cmd += ["--address", address, "--game-seed", "0"]
            stage(f"evaluate on the {'game' if backend == 'real' else 'surrogate'}", cmd, out / f"eval-{backend}.log")
            reports[backend] = json.loads((where / "report.json").read_text())
        control = None
        if not a.no_control:
            # The default car on the game's own track: what training without a fit gives.
            from surrogate.surrogate_file import load_surrogate
            from surrogate.track_io import save_track
            track_csv = out / "game_track.csv"
            save_track(load_surrogate(fit / "surrogate.json").track, track_csv)
            ctrl = out / "control-train"
            stage("control: train on the default car", [PY, "scripts/train_crossq.py", "--backend", "surrogate",
                                                        "--track", str(track_csv), "--budget-minutes", str(a.train_minutes),
                                                        "--run-dir", str(ctrl), "--seed", str(a.seed), "--no-progress",
                                                        *extra], out / "control-train.log")
            where = out / "control-eval-real"
            stage("control: evaluate on the game", [PY, "scripts/evaluate.py", "--agent", str(ctrl), "--laps",
                                                    str(a.laps), "--backend", "real", "--address", address,
                                                    "--game-seed", "0", "--out", str(where), "--no-progress"],
                  out / "control-eval-real.log")
            control = json.loads((where / "report.json").read_text())
    finally:
        game.terminate()
        game.wait(timeout=10)
    g, s = reports["real"], reports["surrogate"]
    game_mean = mean_clean(g, "agent")
    sur_standing = mean_clean(s, "agent", "standing")
    sur_mean = sur_standing if math.isfinite(sur_standing) else mean_clean(s, "agent")
    line = (f"game_clean_lap_rate={g['agent']['clean_lap_rate']:.2f} game_mean_lap_s={game_mean:.2f} "
            f"surrogate_mean_lap_s={sur_mean:.2f} transfer_gap_pct={100.0 * (game_mean / sur_mean - 1.0):.1f} "
            f"baseline_game_lap_s={mean_clean(g, 'baseline'):.2f}")
    # Before a driver laps, the lap-time gap says nothing: how far the two drives agree does.
    from racerl_jax.transfer import compare_drives, load_drive, plot_transfer
    drives = [load_drive(out / f"eval-{b}" / "agent_drive.npz") for b in ("surrogate", "real")]
    agree = compare_drives(*drives)
    plot_transfer(*drives, out / "transfer.png")
    line += (f" agree_m={agree['common_m']:.0f} agree_time_gap_pct={agree['time_gap_pct']:.1f} "
             f"agree_speed_diff_mps={agree['speed_diff_mps']:.2f}")
    if rounds:
        line += f" rounds={len(rounds) + 1} round1_game_clean_lap_rate={rounds[0]['agent']['clean_lap_rate']:.2f}"
    if control is not None:
        line += (f" control_game_clean_lap_rate={control['agent']['clean_lap_rate']:.2f} "
                 f"control_game_mean_lap_s={mean_clean(control, 'agent'):.2f}")
    (out / "summary.txt").write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
