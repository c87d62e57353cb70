"""The ``resumable`` command: look at, check, export and report on a sweep's checkpoint.

    resumable status PATH_OR_URL [--json] [--mirror URL]
    resumable verify PATH_OR_URL [--json]
    resumable export PATH_OR_URL [--h5 OUT.h5] [--jsonl OUT.jsonl [--jsonl-format lossless]]
    resumable retry-failed PATH [--keys K ...] [--error-type T ...] [--dry-run]
    resumable report PATH_OR_URL -o REPORT.html

PATH_OR_URL is a sweep's ``checkpoint_path``, its progress directory, or a mirror root (local,
``file://``, ``s3://``, ``http(s)://``, ...; sharded or not). Exit status: 0 success, 1 failure
(a damaged checkpoint, problems found, a locked checkpoint, storage errors), 2 usage errors and
checkpoints that do not exist. Errors are one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._status_text import (
    clean,
    format_status,
    gather_status,
    open_checked,
    problems_after_open,
    show,
)
from ._urls import is_url, redact
from ._version import __version__, install_hint
from .errors import (
    CheckpointNotFoundError,
    ConfigurationError,
    IntegrityError,
    ObjectNotFoundError,
    ResumableError,
)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
ENV_SNAPSHOT_DIR = "SWEEP_SNAPSHOT_DIR"


class UsageError(Exception):
    """A command line that cannot work (exit 2)."""


class MissingExtraError(Exception):
    """An optional dependency is not installed (exit 2)."""


def _print(text: str = "", *, err: bool = False) -> None:
    """Everything the command prints goes through here, and through `redact`."""
    print(redact(text), file=sys.stderr if err else sys.stdout)


def cmd_status(args: argparse.Namespace) -> int:
    mirror = args.mirror
    if mirror and is_url(args.target):
        raise UsageError(
            "--mirror compares a local checkpoint with its mirror; PATH_OR_URL is already a URL "
            "(give the local checkpoint_path)"
        )
    if mirror is None and not is_url(args.target):
        mirror = os.environ.get(ENV_SNAPSHOT_DIR) or None
    d = gather_status(args.target, mirror)
    if args.json:
        _print(json.dumps(_jsonable(d), indent=2, ensure_ascii=False, allow_nan=False))
    else:
        _print(format_status(d))
    return EXIT_OK if d["verified"] else EXIT_FAIL


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):  # JSON has no NaN or infinity
        return None
    return obj


# -- verify -----------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    from .view import verify

    mirror = args.mirror
    if mirror is None and not is_url(args.target):
        mirror = os.environ.get(ENV_SNAPSHOT_DIR) or None
    problems = verify(args.target, mirror=mirror)
    shown = redact(args.target)
    if args.json:
        out = {
            "location": shown,
            "ok": not problems,
            "problems": [{"where": redact(p.where), "what": redact(p.what)} for p in problems],
        }
        _print(json.dumps(out, indent=2, ensure_ascii=False))
    elif problems:
        _print(f"{shown}: {len(problems)} problem(s)")
        for p in problems:
            _print(f"  {clean(redact(p.where), 300)}: {clean(redact(p.what), 500)}")
    else:
        against = f"; nothing missing against the mirror {redact(mirror)}" if mirror else ""
        _print(f"{shown}: intact (every hash checked{against})")
    return EXIT_FAIL if problems else EXIT_OK


# -- export -----------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from .export import write_h5, write_jsonl

    if not args.h5 and not args.jsonl:
        raise UsageError("nothing to export: give --h5 OUT.h5 and/or --jsonl OUT.jsonl")
    view = open_checked(args.target)
    status = view.status()
    counts = {k: getattr(status, k) for k in ("total", "done", "failed", "pending", "stale")}
    meta = _meta(view)

    def rows() -> Any:
        return view.results(include_stale=args.include_stale)

    for out in (args.h5, args.jsonl):
        if out and not Path(out).expanduser().absolute().parent.is_dir():
            raise UsageError(f"cannot write {out}: no such directory")
    if args.h5:
        path = write_h5(
            rows(), Path(args.h5).expanduser(), sweep=view.name, meta=meta, counts=counts
        )
        _print(f"wrote {_count_h5(path)} item(s) of sweep {show(view.name)} to {path}")
    if args.jsonl:
        path = write_jsonl(
            rows(), Path(args.jsonl).expanduser(), lossless=args.jsonl_format == "lossless"
        )
        with open(path, "rb") as fh:
            n = sum(1 for _ in fh)
        _print(f"wrote {n} item(s) of sweep {show(view.name)} to {path} ({args.jsonl_format})")
    return EXIT_OK


def _meta(view: Any) -> dict[str, Any]:
    from ._codec import decode
    from .view import MergedView

    views = [s for s in view.shards if s is not None] if isinstance(view, MergedView) else [view]
    meta: dict[str, Any] = {}
    for v in views:
        meta.update(decode(v.loaded.state.meta, where="meta"))
    return meta


def _count_h5(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as f:
        return int(f.attrs["n_items"])


# -- retry-failed -----------------------------------------------------------------------------


def cmd_retry_failed(args: argparse.Namespace) -> int:
    """`resumable retry-failed`: the library's `retry_failed`, printed."""
    from .sweep import retry_failed

    try:
        outcome = retry_failed(
            args.target, keys=args.keys, error_types=args.error_type, dry_run=args.dry_run
        )
    except ConfigurationError as exc:  # a URL: not something this command can change (exit 2)
        raise UsageError(str(exc)) from None
    for k in outcome.not_failed:
        _print(f"resumable: not a failed item, skipped: {show(k)}", err=True)
    by_type = sorted(outcome.by_type.items(), key=lambda x: -x[1])
    kinds = ", ".join(f"{t}: {n}" for t, n in by_type)
    marked = outcome.keys
    verb = "would mark" if args.dry_run else "marked"
    _print(
        f"{verb} {len(marked)} failed item(s) of sweep {show(outcome.sweep)} for another attempt"
        + (f" ({kinds})" if kinds else "")
        + ("" if args.dry_run or not marked else "; the next launch runs them")
    )
    if args.dry_run:
        for k in marked:
            _print(f"  {show(k, 120)}")
    return EXIT_OK


# -- report -----------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from . import report

    try:
        report.require_matplotlib()
    except ImportError as exc:
        raise MissingExtraError(
            f"resumable report needs matplotlib ({exc}); install it with: {install_hint('report')}"
        ) from None
    out = Path(args.output).expanduser()
    if not out.absolute().parent.is_dir():
        raise UsageError(f"cannot write {args.output}: no such directory")
    view = open_checked(args.target)
    problems = problems_after_open(view)
    path = report.write_report(view, out, location=redact(args.target), problems=problems)
    _print(f"wrote the report of sweep {show(view.name)} to {path}")
    return EXIT_OK


# -- parser and main --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    parser = argparse.ArgumentParser(
        prog="resumable",
        description="Look at, check, export and report on a resumable sweep's checkpoint.",
        epilog="PATH_OR_URL: a checkpoint_path, its progress directory, or a mirror root "
        "(local path, file://, s3://, http(s)://, ...). Exit status: 0 ok, 1 failure, "
        "2 usage error or no checkpoint found.",
    )
    parser.add_argument("--version", action="version", version=f"resumable {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    target_help = "checkpoint_path, progress directory or mirror root (path or URL)"

    p = sub.add_parser(
        "status",
        parents=[common],
        help="a sweep's progress at a glance",
        description="Counts, last item, rate and ETA, launches and interruptions, failures by "
        "error type, shards, mirror lag (local checkpoints), and whether every hash verifies. "
        "Exit 1 when the checkpoint does not verify.",
    )
    p.add_argument("target", metavar="PATH_OR_URL", help=target_help)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--mirror",
        metavar="URL",
        help=f"compare a local checkpoint with its mirror (default: ${ENV_SNAPSHOT_DIR})",
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "verify",
        parents=[common],
        help="check every hash; exit 0 only when intact",
        description="Check every hash and size of a checkpoint (every shard) and list each "
        "problem. Exit 0 when intact, 1 when problems were found, 2 when there is none.",
    )
    p.add_argument("target", metavar="PATH_OR_URL", help=target_help)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--mirror",
        metavar="URL",
        help="also compare with this mirror: report records it holds that the checkpoint "
        f"lacks (default: ${ENV_SNAPSHOT_DIR})",
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "export",
        parents=[common],
        help="write completed results to HDF5 and/or JSON Lines",
        description="Write every completed item's key, parameters and result, atomically "
        "(see resumable/export.py for the layouts).",
    )
    p.add_argument("target", metavar="PATH_OR_URL", help=target_help)
    p.add_argument("--h5", metavar="OUT.h5", help="HDF5 file to write")
    p.add_argument("--jsonl", metavar="OUT.jsonl", help="JSON Lines file to write")
    p.add_argument(
        "--jsonl-format",
        choices=("plain", "lossless"),
        default="plain",
        help="plain: arrays as {dtype, shape, data}, for other tools (default); lossless: "
        "the codec's exact form (resumable.export.decode restores every value)",
    )
    p.add_argument("--include-stale", action="store_true", help="also export results of stale keys")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "retry-failed",
        parents=[common],
        help="mark failed items for another attempt (local checkpoints)",
        description="Durably mark failed items as pending again, so the next launch runs them. "
        "Local checkpoints only, while no sweep holds them open.",
    )
    p.add_argument("target", metavar="PATH", help="checkpoint_path or progress directory")
    p.add_argument("--keys", nargs="+", metavar="K", help="only these keys (default: all failed)")
    p.add_argument(
        "--error-type", nargs="+", metavar="T", help="only failures of these error types"
    )
    p.add_argument("--dry-run", action="store_true", help="show what would be marked")
    p.set_defaults(func=cmd_retry_failed)

    p = sub.add_parser(
        "report",
        parents=[common],
        help="write a self-contained HTML report (needs matplotlib)",
        description="One HTML page: summary, completed items over time across launches, "
        "interruptions and time lost, item durations, failures by type. Needs the optional "
        f"extra: {install_hint('report')}.",
    )
    p.add_argument("target", metavar="PATH_OR_URL", help=target_help)
    p.add_argument("-o", "--output", required=True, metavar="REPORT.html", help="file to write")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "chaos",
        add_help=False,
        help="kill a sweep command again and again; prove nothing is lost or doubled",
        description="resumable chaos --checkpoint PATH_OR_URL [--kills N] [--signal "
        "TERM|KILL|mixed] [--min-s A --max-s B] [--seed S] [--timeout-s T] [--json] -- "
        "COMMAND ... ({machine} in COMMAND becomes a new empty dir per launch)",
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_chaos)
    return parser


def cmd_chaos(args: argparse.Namespace) -> int:
    """`resumable chaos [options] -- command ...`: the library's `run_chaos`, printed."""
    from . import chaos
    from .chaos import ChaosConfig, Launch, run_chaos

    rest = list(args.rest)
    if "--" not in rest:
        _print("resumable chaos: put the command to torture after --", err=True)
        return 2
    cut = rest.index("--")
    opts, command = rest[:cut], rest[cut + 1 :]
    doc = (chaos.__doc__ or "").splitlines()
    ap = argparse.ArgumentParser(prog="resumable chaos", description=doc[0] if doc else None)
    ap.add_argument("--checkpoint", required=True, help="checkpoint_path or mirror root")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--signal", choices=["TERM", "KILL", "mixed"], default="mixed")
    ap.add_argument("--min-s", type=float, default=0.0)
    ap.add_argument("--max-s", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout-s", type=float, default=300.0)
    ap.add_argument("--watch", default=None, help="local progress to watch (default: derived)")
    ap.add_argument("--log", default=None, help="file for the command's output (default stderr)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ns = ap.parse_args(opts)
    log = open(ns.log, "a") if ns.log else None  # noqa: SIM115 - closed below
    try:
        cfg = ChaosConfig(
            command=command,
            checkpoint=ns.checkpoint,
            kills=ns.kills,
            signal=ns.signal,
            min_s=ns.min_s,
            max_s=ns.max_s,
            seed=ns.seed,
            timeout_s=ns.timeout_s,
            watch=ns.watch,
            output=log,
        )

        def progress(launch: Launch) -> None:
            if not ns.json:
                _print(
                    f"launch {launch.index}: {launch.signal or '-'} -> exit {launch.exit_code}, "
                    f"+{launch.new_records} records, lost {launch.lost}",
                    err=True,
                )

        report = run_chaos(cfg, on_launch=progress)
    except ResumableError as exc:
        _print(f"resumable chaos: {exc}", err=True)
        return 2
    finally:
        if log is not None:
            log.close()
    _print(json.dumps(report.as_dict(), indent=1) if ns.json else report.text())
    return 0 if report.ok else 1


def _error(message: str) -> None:
    _print(f"resumable: error: {redact(message)}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["chaos"] and not {"-h", "--help"} & set(argv[1:2]):
        # its own parser: everything after -- is the command to run
        return cmd_chaos(argparse.Namespace(rest=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors, 0 on --help
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(level=logging.WARNING, format="resumable: %(levelname)s: %(message)s")
    if debug:
        logging.getLogger("resumable").setLevel(logging.DEBUG)
    try:
        return int(args.func(args))
    except (UsageError, MissingExtraError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except (CheckpointNotFoundError, ObjectNotFoundError) as exc:
        _trace(debug)
        _error(str(exc))
        return EXIT_USAGE
    except ResumableError as exc:
        _trace(debug)
        hint = ""
        if isinstance(exc, IntegrityError) and args.command != "verify":
            hint = f" (resumable verify {args.target} lists every problem)"
        _error(f"{type(exc).__name__}: {exc}{hint}")
        return EXIT_FAIL
    except OSError as exc:
        _trace(debug)
        if isinstance(exc, BrokenPipeError):
            with contextlib.suppress(OSError):  # stdout's reader went away (| head)
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_FAIL
        name = f" {exc.filename}" if exc.filename else ""
        _error(f"{type(exc).__name__}:{name} {exc.strerror or exc}")
        return EXIT_FAIL
    except KeyboardInterrupt:
        _print("resumable: interrupted", err=True)
        return 130
    except Exception as exc:  # a bug: still one clear line, never a traceback unless --debug
        _trace(debug)
        _error(
            f"unexpected {type(exc).__name__}: {str(exc)[:300]} (a bug in resumable "
            f"{__version__}; --debug shows where)"
        )
        return EXIT_FAIL


def _trace(debug: bool) -> None:
    if debug:
        traceback.print_exc()
