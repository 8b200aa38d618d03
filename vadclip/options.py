"""One declaration per option: a field of an options dataclass carries its default and
its help text (:func:`option`); the command line is generated from the fields
(:func:`add_options`) and read back into the dataclass (:func:`options_from`)."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Dict, Iterable, Optional, Sequence

# options several commands share, described once
ADDRESS_HELP = ("Ray cluster to join: an address, or 'auto' for a cluster started here with `ray start` "
                "(default: $RAY_ADDRESS, which `ray job submit` sets; else an embedded local Ray)")
TRACKING_URI_HELP = ("MLflow store shared by train, score and evaluate (default: $MLFLOW_TRACKING_URI, "
                     "else sqlite:///./runs/mlflow.db with artifacts in ./runs/mlartifacts)")
MISMATCH_HELP = ("use features whose provenance (CLIP model and weights, image size, normalisation, snippet "
                 "length, frame rule) differs from the model's training features; recorded in the summary, MLflow "
                 "and the report (default: refused in one line, exit 2)")


def option(default: Any = dataclasses.MISSING, *, help: str, flag: Optional[str] = None,
           choices: Optional[Sequence[Any]] = None, cli: bool = True, default_factory: Any = dataclasses.MISSING,
           group: Optional[str] = None) -> Any:
    """A dataclass field that is also a command-line option (``--field-name`` unless
    ``flag`` says otherwise; ``cli=False``: documented here, not on the command line)."""
    meta = {"help": help, "flag": flag, "choices": choices, "cli": cli, "group": group}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _scalar_type(tp: Any):
    """int/float/str of ``Optional[int]`` etc.; bool stays bool."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else str
    return tp if tp in (int, float, str, bool) else None


def cli_fields(cls, only: Optional[Iterable[str]] = None, exclude: Iterable[str] = ()) -> list:
    keep = set(only) if only is not None else None
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli") and f.name not in set(exclude)
            and (keep is None or f.name in keep)]


def add_options(parser: argparse.ArgumentParser, cls, only: Optional[Iterable[str]] = None,
                exclude: Iterable[str] = (), help: Optional[Dict[str, str]] = None,
                defaults: Optional[Dict[str, Any]] = None) -> None:
    """The fields of ``cls`` declared with :func:`option`, as flags of ``parser`` (in
    their groups); ``help``/``defaults`` replace a field's text or default for this
    command only."""
    hints = typing.get_type_hints(cls)
    groups: Dict[str, Any] = {}
    for f in cli_fields(cls, only, exclude):
        target = parser
        if f.metadata.get("group"):
            target = groups.get(f.metadata["group"]) or groups.setdefault(
                f.metadata["group"], parser.add_argument_group(f.metadata["group"]))
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        text = (help or {}).get(f.name, f.metadata["help"])
        default = (defaults or {}).get(f.name, None if f.default is dataclasses.MISSING else f.default)
        tp = _scalar_type(hints[f.name])
        if tp is bool:
            target.add_argument(flag, dest=f.name, action="store_true", default=bool(default), help=text)
            continue
        kw = {"choices": list(f.metadata["choices"])} if f.metadata.get("choices") else {}
        target.add_argument(flag, dest=f.name, type=tp or str, default=default, help=text, **kw)


def options_from(args: argparse.Namespace, cls, **given: Any):
    """``cls`` from the parsed flags of its fields (``given`` fields win)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **given})
