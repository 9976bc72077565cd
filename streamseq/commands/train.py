"""``streamseq train`` (the trainer process) and ``streamseq models list|promote|rollback``."""
from __future__ import annotations

import argparse
import signal
import threading
from datetime import UTC, datetime

from ..errors import ConfigError, StreamseqError
from . import args


def register(subparsers) -> None:
    t = subparsers.add_parser("train", help="retrain models on the window store and promote better ones",
                              description="Retrain models on the window store on the [trainer] schedule; "
                                          "promote a candidate only if it beats the model in service.")
    args.common(t)
    t.add_argument("--config", required=True, help="TOML config ([store], [registry], [trainer] sections)")
    t.add_argument("--once", action="store_true", help="one training run, then exit")
    t.set_defaults(fn=cmd_train)

    m = subparsers.add_parser("models", help="model registry: list versions, promote, roll back")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="COMMAND")
    for name, fn, help_ in (("list", cmd_models_list, "versions with their data range and validation metrics"),
                            ("promote", cmd_models_promote, "put a version in service"),
                            ("rollback", cmd_models_rollback, "put the previously promoted version back")):
        p = msub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".")
        args.common(p)
        if name == "promote":
            p.add_argument("version", help="e.g. v0003")
        where = p.add_mutually_exclusive_group()
        where.add_argument("--registry", help="registry folder")
        where.add_argument("--config", help="TOML config naming [registry] path")
        p.add_argument("--model", default=None if name == "list" else "transformer",
                       help="transformer, gru or lstm" + (" (default: all)" if name == "list" else " (default: transformer)"))
        p.set_defaults(fn=fn)


def _registry(a: argparse.Namespace):
    from .. import config as config_mod
    from ..registry import ModelRegistry

    if a.registry:
        return ModelRegistry(a.registry)
    cfg = config_mod.load(a.config) if a.config else config_mod.from_dict({})
    return ModelRegistry(cfg.resolve(cfg.registry.path))


def cmd_train(a) -> int:
    from .. import config as config_mod
    from ..trainer_process import lower_priority

    cfg = config_mod.load(a.config)
    if not cfg.store.path:
        raise ConfigError("store.path", "a window store folder: the trainer trains on it")
    args.setup_logging(a, cfg)
    if not (a.once or cfg.trainer.once):
        lower_priority(cfg)  # beside a worker on one machine, the stream comes first
    from ..clock import SystemClock
    from ..compose import open_trainer
    from ..threads import set_threads
    from ..trainer import trainer_threads

    set_threads(trainer_threads(cfg))
    trainer = open_trainer(cfg)
    if not trainer.models:
        raise StreamseqError("nothing to train: add 'transformer' to forecast.models, or set trainer.refresh_rnn "
                             "with gru/lstm configured")
    if a.once or cfg.trainer.once:
        for o in trainer.run_once():
            m = o.metrics
            detail = (f"val MAE {m['val_mae']:.4f} vs {m['incumbent_val_mae']:.4f} in service"
                      if "val_mae" in m else o.reason)
            print(f"{o.name}: {'promoted ' + o.version if o.version else ('accepted' if o.accepted else 'rejected')}"
                  f" ({detail})")
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    trainer.run_forever(stop, SystemClock())
    return 0


def cmd_models_list(a) -> int:
    reg = _registry(a)
    rows = reg.list(a.model)
    if not rows:
        print(f"no model versions in {reg.path}")
        return 0
    print("* = in service; MAE on held-out windows in units of each key's scale, vs the model it was trained to replace")
    print(f"{'model':<12} {'version':<8} {'':1} {'created (UTC)':<19} {'data':<41} {'val MAE':>9} {'replaced':>9}")
    for r in rows:
        created = (datetime.fromtimestamp(r["created_ns"] / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
                   if isinstance(r.get("created_ns"), int) else "?")
        data = " .. ".join(r["data_range"]) if isinstance(r.get("data_range"), list) else r.get("error", "")
        print(f"{r['name']:<12} {r['version']:<8} {'*' if r['promoted'] else ' ':1} {created:<19} {data:<41} "
              f"{_num(r.get('val_mae')):>9} {_num(r.get('incumbent_val_mae')):>9}")
    return 0


def _num(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def cmd_models_promote(a) -> int:
    from ..errors import ArtifactError
    from ..registry import RegistryError

    reg = _registry(a)
    try:
        reg.promote(a.model, a.version)
    except ArtifactError as exc:  # the version asked for can't be put in service: a usage error (exit 2)
        raise RegistryError(str(exc)) from exc
    print(f"{a.model}: {a.version} promoted (workers pick it up between batches)")
    return 0


def cmd_models_rollback(a) -> int:
    reg = _registry(a)
    version = reg.rollback(a.model)
    print(f"{a.model}: rolled back to {version}")
    return 0
