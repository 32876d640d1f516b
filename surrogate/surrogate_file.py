"""The fitted-surrogate file: one JSON that holds a game's car, its actuators, the track and how
they were fitted. ``surrogate.fit`` (``scripts/train_surrogate.py``) writes it; training, evaluation
and fine-tuning read it (``train_crossq.py --surrogate FILE``).

Version 2 (written here)::

    {"format": "racerl-surrogate", "version": 2,
     "model": "dynamic" | "kinematic",
     "car": {CarParams field: number},            # steering servo and pedal maps included
     "delay_steps": 0,                            # input delay, control periods
     "control": {"dt": 0.04, "game_dt": 0.02},    # control period and the game's tick, s (or null)
     "spread": {CarParams field: fraction},       # fit uncertainty, for domain randomisation
     "residual": null | {"hidden": [32, 32], "layers": [[W, b], ...], "in_scale": [...],
                         "out_scale": [...]},     # surrogate.residual's network, plain arrays
     "sensor_noise": null | {"speed_mps": [...], "accel_lat": [...], ...},  # telemetry noise by speed
                                                  # (surrogate.observation.sensor_noise_table); optional
     "trusted_speed_mps": null | 60.0,            # the speed up to which the fit matched held-out
                                                  # drives (surrogate.fit_regimes.trusted_speed); optional
     "track": {"name", "x", "y", "w_right", "w_left"},
     "provenance": {...}}                         # recordings, frames, protocol and project version

Version 1 files (model, car, track) still load, with no delay, no residual and the env's default
control period. Nothing is unpickled: the file is plain JSON, checked field by field, and every
error names the file, the field and the fix.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from surrogate.env import MAX_DELAY_STEPS
from surrogate.car import MODELS, PARAM_NAMES, CarParams, CarParamsError, car_params_from_dict, car_params_to_dict
from surrogate.observation import SensorNoiseError, sensor_noise_table
from surrogate.residual import Residual, ResidualError, residual_from_dict, residual_to_dict
from surrogate.track_io import TrackData, TrackFileError, validate_track

SURROGATE_FORMAT = "racerl-surrogate"
SURROGATE_VERSION = 2
READABLE_VERSIONS = (1, 2)

_FIELDS = {1: {"format", "version", "model", "car", "track"},
           2: {"format", "version", "model", "car", "track", "delay_steps", "control", "spread", "residual", "provenance",
               "sensor_noise", "trusted_speed_mps"}}


class SurrogateFileError(ValueError):
    """A fitted-surrogate file that cannot be used: names the file, the field and the fix."""


@dataclasses.dataclass(frozen=True)
class FittedSurrogate:
    """A game's car and track as fitted from its telemetry."""

    model: str
    car: CarParams
    track: TrackData
    delay_steps: int = 0
    dt: float | None = None  # control period the fit ran at (the game's ticks per step x tick), s
    game_dt: float | None = None  # the game's own tick, s, where it said (hello)
    spread: dict[str, float] = dataclasses.field(default_factory=dict)
    residual: Residual | None = None
    provenance: dict = dataclasses.field(default_factory=dict)
    sensor_noise: dict | None = None  # telemetry noise by speed, as the env takes it (make_params)
    trusted_speed: float | None = None  # m/s: up to where the fit matched held-out drives (None: unknown)

    def env_timing(self) -> dict[str, Any]:
        """The ``EnvConfig`` fields the game's timing sets: its input delay and, where the file says,
        the control period it was fitted at (what training, evaluation and the baseline drive at)."""
        return {"delay_steps": self.delay_steps, **({"dt": self.dt} if self.dt is not None else {})}


def save_surrogate(path: str | Path, model: str, car: CarParams, track: TrackData, *, delay_steps: int = 0,
                   dt: float | None = None, game_dt: float | None = None, spread: dict[str, float] | None = None,
                   residual: Residual | None = None, provenance: dict | None = None,
                   sensor_noise: dict | None = None, trusted_speed: float | None = None) -> Path:
    """Write the surrogate file (version 2); the arguments are checked as ``load_surrogate`` checks them."""
    if model not in MODELS:
        raise SurrogateFileError(f"model {model!r} is not a surrogate model; use one of {sorted(MODELS)}")
    doc = {
        "format": SURROGATE_FORMAT,
        "version": SURROGATE_VERSION,
        "model": model,
        "car": car_params_to_dict(car),
        "delay_steps": int(delay_steps),
        "control": {"dt": dt, "game_dt": game_dt},
        "spread": {k: float(v) for k, v in (spread or {}).items()},
        "residual": None if residual is None else residual_to_dict(residual),
        "track": {
            "name": track.name,
            **{k: np.asarray(getattr(track, k), np.float64).tolist() for k in ("x", "y", "w_right", "w_left")},
        },
        "provenance": provenance or {},
        "sensor_noise": sensor_noise,
        "trusted_speed_mps": None if trusted_speed is None else float(trusted_speed),
    }
    path = Path(path)
    _check(path, doc)  # never write a file this module would refuse to read
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


# The default limiter keeps this far under the fit's trusted speed (but never under half of it). The
# trusted speed is the top of the fastest speed band whose held-out drives the fit matched, and near
# that top the recordings thin out: on CarRacing's probe fit (trusted to 60 m/s) the fitted car lost
# 1-1.5 m/s in the long corners at 60 where the game's car kept its speed, and drivers trained at a
# 60 m/s limit lapped the game 10/10 on 2 seeds of 3 (the third ran wide there), at 50 m/s on 3 of 3,
# each within 4.6% of its surrogate lap (docs/experiments.md, session 20). One speed band (10 m/s).
TRUST_MARGIN_MPS = 10.0


def default_speed_limit(trusted_speed: float | None) -> float:
    """The limiter a fit's trusted speed asks for: ``TRUST_MARGIN_MPS`` under it, at least half of it;
    0 (none) where the fit does not say."""
    if not trusted_speed:
        return 0.0
    return max(float(trusted_speed) - TRUST_MARGIN_MPS, 0.5 * float(trusted_speed))


def speed_limit_for(given: float | None, fitted: FittedSurrogate | None) -> float:
    """The speed limiter a command drives with: ``given`` (``--speed-limit``; 0 for none), or by default
    a margin under the fit's trusted speed (``default_speed_limit``; none without a fit, or a fit that
    does not say)."""
    if given is not None:
        return given
    return default_speed_limit(fitted.trusted_speed if fitted is not None else None)


# On a fitted game's track (--surrogate) training episodes end a metre inside the edges, and the
# baseline is tuned inside them: CarRacing's drivers of one seed of three ran 1 m wider on the game
# than in the surrogate and left it at 250 m; trained with the margin the same seed lapped it 10 of
# 10, every lap about 2% slower (docs/experiments.md, session 22).
FITTED_EDGE_MARGIN = 1.0


def edge_margin_for(given: float | None, fitted: bool) -> float:
    """The edge margin (``surrogate.env.EnvConfig.edge_margin``) a command trains or tunes with:
    ``given``, or by default ``FITTED_EDGE_MARGIN`` on a fitted car (``fitted``) and 0 otherwise."""
    if given is not None:
        return float(given)
    return FITTED_EDGE_MARGIN if fitted else 0.0


def line_for(given: str | None, fitted: bool) -> str:
    """The reference line (``surrogate.laptime.LINE_NAMES``) a command drives with: ``given``
    (``--reference-line``), or by default the minimum-time line on a fitted car (``fitted``) and the
    minimum-curvature line otherwise. A fitted car runs at its speed limiter through most corners
    (CarRacing's at 50 m/s on 19 g of grip), where the minimum-curvature line is 8% slower than a
    shorter one; on the bundled tracks' default car the drivers and their figures were measured on
    the minimum-curvature line."""
    if given:
        return given
    return "min-time" if fitted else "min-curvature"


def load_surrogate(path: str | Path) -> FittedSurrogate:
    """Read and validate a fitted-surrogate file; every error names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise SurrogateFileError(f"{path}: surrogate file not found; give the surrogate.json that "
                                 "scripts/train_surrogate.py wrote")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"),
                         parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not a number")))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        where = f":{e.lineno}:{e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise SurrogateFileError(f"{path}{where}: not valid JSON ({getattr(e, 'msg', e)})") from None
    except ValueError as e:
        raise SurrogateFileError(f"{path}: not valid JSON ({e})") from None
    return _check(path, doc)


def _check(path: Path, doc: Any) -> FittedSurrogate:
    if not isinstance(doc, dict):
        raise SurrogateFileError(f"{path}: expected a JSON object with format, version, model, car, track")
    if doc.get("format") != SURROGATE_FORMAT:
        raise SurrogateFileError(
            f"{path}: field 'format' is {doc.get('format')!r}, expected {SURROGATE_FORMAT!r}: not a fitted-surrogate file"
        )
    version = doc.get("version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise SurrogateFileError(
            f"{path}: field 'version' is {version!r}; this racerl-jax reads versions {list(READABLE_VERSIONS)} "
            "(refit with this version, or upgrade racerl-jax)"
        )
    missing = [k for k in ("model", "car", "track") if k not in doc]
    if missing:
        raise SurrogateFileError(f"{path}: missing field(s) {missing}")
    unknown = sorted(set(doc) - _FIELDS[version])
    if unknown:
        raise SurrogateFileError(f"{path}: unknown field(s) {unknown}; version {version} has {sorted(_FIELDS[version])}")
    model = doc["model"]
    if model not in MODELS:
        raise SurrogateFileError(f"{path}: field 'model' is {model!r}; expected one of {sorted(MODELS)}")
    try:
        car = car_params_from_dict(doc["car"])
    except CarParamsError as e:
        raise SurrogateFileError(f"{path}: field 'car': {e}") from None
    delay = doc.get("delay_steps", 0)
    if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_STEPS:
        raise SurrogateFileError(f"{path}: field 'delay_steps' is {delay!r}; expected an integer in [0, {MAX_DELAY_STEPS}]")
    control = doc.get("control") or {}
    if not isinstance(control, dict) or set(control) - {"dt", "game_dt"}:
        raise SurrogateFileError(f"{path}: field 'control' must be an object with dt and game_dt (seconds or null)")
    dt, game_dt = (_seconds(path, f"control.{k}", control.get(k)) for k in ("dt", "game_dt"))
    if dt is not None and dt > 0.2:
        raise SurrogateFileError(f"{path}: field 'control.dt' is {dt} s; the env's control period is at most 0.2 s")
    spread = doc.get("spread") or {}
    if not isinstance(spread, dict):
        raise SurrogateFileError(f"{path}: field 'spread' must be an object of car parameter -> fraction")
    for k, v in spread.items():
        if k not in PARAM_NAMES:
            raise SurrogateFileError(f"{path}: field 'spread' names {k!r}, not a car parameter ({', '.join(PARAM_NAMES)})")
        if not _is_number(v) or not 0.0 <= v < 1.0:
            raise SurrogateFileError(f"{path}: field 'spread.{k}' is {v!r}; expected a fraction in [0, 1)")
    residual = doc.get("residual")
    if residual is not None:
        try:
            residual = residual_from_dict(residual)
        except ResidualError as e:
            raise SurrogateFileError(f"{path}: field 'residual': {e}") from None
    provenance = doc.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise SurrogateFileError(f"{path}: field 'provenance' must be an object")
    noise = doc.get("sensor_noise")
    if noise is not None:
        try:
            sensor_noise_table(noise)
        except SensorNoiseError as e:
            raise SurrogateFileError(f"{path}: field 'sensor_noise': {e}") from None
    trusted = doc.get("trusted_speed_mps")
    if trusted is not None and (not _is_number(trusted) or not trusted > 0):
        raise SurrogateFileError(f"{path}: field 'trusted_speed_mps' is {trusted!r}; expected a positive speed in m/s "
                                 "or null")
    return FittedSurrogate(model=model, car=car, track=_track_from_doc(path, doc["track"]), delay_steps=delay, dt=dt,
                           game_dt=game_dt, spread={k: float(v) for k, v in spread.items()}, residual=residual,
                           provenance=provenance, sensor_noise=noise,
                           trusted_speed=None if trusted is None else float(trusted))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _seconds(path: Path, field: str, v: Any) -> float | None:
    if v is None:
        return None
    if not _is_number(v) or not v > 0:
        raise SurrogateFileError(f"{path}: field '{field}' is {v!r}; expected a positive number of seconds or null")
    return float(v)


def _track_from_doc(path: Path, t: Any) -> TrackData:
    if not isinstance(t, dict):
        raise SurrogateFileError(f"{path}: field 'track' must be an object with name, x, y, w_right, w_left")
    cols = ("x", "y", "w_right", "w_left")
    missing = [k for k in ("name", *cols) if k not in t]
    if missing:
        raise SurrogateFileError(f"{path}: field 'track' lacks {missing}")
    if not isinstance(t["name"], str) or not t["name"]:
        raise SurrogateFileError(f"{path}: field 'track.name' must be a non-empty string, got {t['name']!r}")
    arrays = {}
    for k in cols:
        v = t[k]
        if not isinstance(v, list) or not all(_is_number(a) for a in v):
            raise SurrogateFileError(f"{path}: field 'track.{k}' must be a list of numbers (metres)")
        arrays[k] = np.asarray(v, np.float64)
    lengths = {k: a.shape[0] for k, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise SurrogateFileError(f"{path}: track arrays differ in length {lengths}; give one value per centre-line point")
    try:
        return validate_track(TrackData(t["name"], **arrays), source=f"{path} field 'track'")
    except TrackFileError as e:
        raise SurrogateFileError(str(e)) from None
