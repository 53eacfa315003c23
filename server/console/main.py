"""``fedavg``: drive an orchestrator from a terminal or a script over its public API.

The argument parser, and the one place that turns a failure into a message and an exit code
(see ``server.console.errors``). The subcommands themselves are in ``commands``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console

from server.console import commands
from server.console.client import Connection, Orchestrator
from server.console.errors import ConsoleError
from server.console.options import admin_token, orchestrator_url

EPILOG = """\
exit codes:
  0  done (a followed job completed)
  1  the job failed or was stopped
  2  a bad flag or value
  3  the orchestrator cannot be reached (or its certificate is not trusted)
  4  the orchestrator refused the request (4xx: no such dataset or model, a job running, ...)
  5  the orchestrator failed (5xx: a dataset that cannot be found, see its log)

environment:
  ORCHESTRATOR_URL    the orchestrator (default http://127.0.0.1:11999)
  FEDAVG_ADMIN_TOKEN  the admin token, when the orchestrator has one (or --token-file)
  FEDAVG_CA_CERT      a CA bundle to trust for https:// (or --ca-cert)
"""

NOT_A_TERMINAL_WIDTH = 200
READS = {
    "status": "the run, round r of E, and the nodes",
    "nodes": "every node the orchestrator knows",
    "datasets": "the catalogue and the prepared datasets",
    "models": "the saved models",
    "runs": "past runs",
}


def build_parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--orchestrator", metavar="URL", help="default: $ORCHESTRATOR_URL")
    connection.add_argument(
        "--token-file", type=Path, metavar="PATH", help="read the admin token from this file"
    )
    connection.add_argument("--ca-cert", type=Path, metavar="PATH", help="CA bundle for https")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON, for scripts")
    both = [connection, as_json]
    parser = argparse.ArgumentParser(
        prog="fedavg",
        allow_abbrev=False,
        description="Drive a fedavg orchestrator over its REST and WebSocket API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # No abbreviations: `--token x` must not be taken for `--token-file x`.
    add = functools.partial(sub.add_parser, allow_abbrev=False)
    for name, text in READS.items():
        add(name, parents=both, help=text, description=text)
    add("prepare", parents=both, help="prepare a dataset, showing progress").add_argument("dataset")
    _train_parser(add("train", parents=both, help="start a job and follow it"))
    evaluate = add(
        "evaluate",
        parents=both,
        help="evaluate a saved model on the test splits of the nodes holding a dataset",
    )
    evaluate.add_argument("dataset", help="data the nodes hold (see `fedavg datasets`)")
    evaluate.add_argument(
        "--model", required=True, metavar="FILE", help="a saved model (see `fedavg models`)"
    )
    add("watch", parents=both, help="follow the running job to its end")
    add("stop", parents=both, help="stop the running job")
    export = add("export", parents=[connection], help="a run's rounds and node metrics")
    export.add_argument("run", nargs="?", help="the run id (default: the current or last run)")
    kind = export.add_mutually_exclusive_group(required=True)
    kind.add_argument("--csv", dest="format", action="store_const", const="csv")
    kind.add_argument("--json", dest="format", action="store_const", const="json")
    export.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    plot = add("plot", parents=[connection], help="accuracy and loss per round, as PNG")
    plot.add_argument("run", nargs="?", help="the run id (default: the current or last run)")
    plot.add_argument("output", type=Path, help="the PNG to write")
    plot.add_argument("--size", default="1200x800", help="WIDTHxHEIGHT in pixels (1200x800)")
    download = add("download", parents=both, help="save a model file")
    download.add_argument("model", nargs="?", help="the model's name (default: the newest)")
    download.add_argument("-o", "--output", type=Path, help="file or folder (default: here)")
    return parser


def _train_parser(train: argparse.ArgumentParser) -> None:
    train.add_argument(
        "dataset",
        help="a prepared dataset, or data the nodes hold themselves (`fedavg datasets` "
        "lists both: the nodes' data as announced, 'on nodes')",
    )
    train.add_argument(
        "--mode",
        choices=("local", "shards"),
        help="local: train on the nodes' own data, which never leaves them; shards: on the "
        "server's prepared dataset, shipped to the nodes (needed only when the name is both)",
    )
    train.add_argument("--rounds", type=int, help="federated rounds (default: the server's)")
    train.add_argument("--model", help="an arch (mlp, cnn, lenet5, resnet) or a JSON spec")
    train.add_argument("--partition", help="iid, dirichlet:ALPHA or classes:K")
    train.add_argument("--aggregation", help="weighted, uniform, median, trimmed_mean")
    train.add_argument(
        "--strategy", help="server optimizer: none, fedavgm, fedadagrad, fedadam, ..."
    )
    for flag in ("--server-lr", "--server-momentum", "--beta1", "--beta2", "--tau"):
        train.add_argument(flag, type=float, help="a server optimizer hyper-parameter")
    train.add_argument("--optimizer", choices=("adam", "sgd"), help="the nodes' optimizer")
    train.add_argument("--lr", type=float, help="the nodes' learning rate")
    train.add_argument("--batch-size", type=int, help="local batch size")
    train.add_argument("--local-epochs", type=int, help="local epochs per round")
    train.add_argument("--max-batches", type=int, help="at most this many batches per epoch")
    train.add_argument("--proximal-mu", type=float, help="FedProx's proximal term (0: off)")
    train.add_argument("--detach", action="store_true", help="start the job and return")


HANDLERS: dict[str, commands.Handler] = {
    name: getattr(commands, name)
    for name in (
        *READS,
        "prepare",
        "train",
        "evaluate",
        "watch",
        "stop",
        "export",
        "plot",
        "download",
    )
}


def run(argv: list[str] | None, env: Mapping[str, str]) -> int:
    """The command's exit code; argparse itself exits 2 on a bad command line."""
    args = build_parser().parse_args(argv)
    try:
        ca_cert = args.ca_cert or (
            Path(env["FEDAVG_CA_CERT"]) if env.get("FEDAVG_CA_CERT") else None
        )
        connection = Connection(
            orchestrator_url(args.orchestrator, env), admin_token(args.token_file, env), ca_cert
        )
        as_json = getattr(args, "json", False) is True
        console = Console()
        if not console.is_terminal:  # piped: whole ids and names, never cut to 80 columns
            console = Console(width=NOT_A_TERMINAL_WIDTH)
        output = commands.Output(console, as_json)
        return asyncio.run(_call(HANDLERS[args.command], connection, args, output))
    except ConsoleError as exc:
        print(f"fedavg {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if args.command in ("train", "watch"):
            print(
                "\nstopped following; the job carries on (`fedavg watch` follows it again, "
                "`fedavg stop` stops it)",
                file=sys.stderr,
            )
        return 130


async def _call(
    handler: commands.Handler,
    connection: Connection,
    args: argparse.Namespace,
    output: commands.Output,
) -> int:
    async with Orchestrator(connection) as api:
        return await handler(api, args, output)


def main(argv: list[str] | None = None) -> None:
    raise SystemExit(run(argv, os.environ))


if __name__ == "__main__":
    main()
