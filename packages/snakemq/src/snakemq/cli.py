"""The ``snakemq`` command: listen, send, inspect queues, benchmark, demo.

Every subcommand is a thin user of the public sync API (``Link``,
``Packeter``, ``Messaging``); ``snakemq <command> --help`` has examples.
Exit codes: 0 success, 1 a message was dropped or a step failed, 2 a timeout,
64 bad usage or configuration (a message says what to fix).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO, NoReturn, TextIO

import snakemq_proto
from snakemq_proto import SnakeMQError, StorageError

import snakemq
from snakemq._cli_peer import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Peer,
    UsageError,
    parse_address,
    readable_file,
    ssl_config_from,
)
from snakemq.message import FLAG_PERSISTENT, Message


def _add_tls_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TLS")
    g.add_argument("--tls-cert", metavar="FILE", help="this peer's certificate (PEM)")
    g.add_argument("--tls-key", metavar="FILE", help="this peer's private key (PEM)")
    g.add_argument(
        "--tls-ca", metavar="FILE", help="CA that signs remote certificates; enables mutual TLS"
    )
    g.add_argument(
        "--tls-bind-ident",
        action="store_true",
        help="with --tls-ca: a remote identifier must be named by the remote certificate",
    )


def _render(ident: str, message: Message, as_json: bool) -> str:
    try:
        text: str | None = message.data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if as_json:
        record: dict[str, Any] = {
            "from": ident,
            "uuid": message.uuid.hex(),
            "ttl": message.ttl,
            "flags": message.flags,
        }
        if text is not None:
            record["data"] = text
        else:
            record["data_base64"] = base64.b64encode(message.data).decode("ascii")
        return json.dumps(record)
    shown = text if text is not None else "base64:" + base64.b64encode(message.data).decode()
    ttl = "inf" if message.ttl is None else f"{message.ttl:g}"
    return f"{ident} {message.uuid.hex()} ttl={ttl} {shown}"


def _write_record(args: argparse.Namespace, out: TextIO, ident: str, message: Message) -> None:
    if args.raw:
        binary = getattr(out, "buffer", None)
        if binary is not None:
            out.flush()
            binary.write(message.data + b"\n")
            binary.flush()
        else:  # a text stream without bytes underneath (tests): the text, lossless
            out.write(message.data.decode("utf-8", "surrogateescape") + "\n")
            out.flush()
        return
    print(_render(ident, message, args.json), file=out, flush=True)


def _start(peer: Peer, args: argparse.Namespace, ssl_config: snakemq.link.SSLConfig | None) -> None:
    """Bind ``--listen``, add every ``--connect``, start the loop thread."""
    if args.listen is not None:
        bound = peer.listen(parse_address(args.listen, what="--listen"), ssl_config)
        print(f"# {args.ident} listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    for target in args.connect:
        peer.connect(parse_address(target, what="--connect"), ssl_config)
    peer.start()


def cmd_listen(args: argparse.Namespace, out: TextIO) -> int:
    if args.listen is None and not args.connect:
        raise UsageError("give --listen [HOST:]PORT, --connect HOST:PORT, or both")
    ssl_config = ssl_config_from(args)
    peer = Peer(args.ident, args.storage)
    received = threading.Event()
    count = 0
    lock = threading.Lock()

    reader_gone = False

    def on_recv(conn_id: str, ident: str, message: Message) -> None:
        nonlocal count, reader_gone
        with lock:
            if reader_gone:
                return
            if not args.quiet:
                try:
                    _write_record(args, out, ident, message)
                except BrokenPipeError:  # `snakemq listen | head -1`: the reader left
                    reader_gone = True
                    received.set()
                    return
            count += 1
            if args.count and count >= args.count:
                received.set()

    def on_connect(conn_id: str, ident: str) -> None:
        print(f"# {ident} connected", file=sys.stderr, flush=True)

    def on_disconnect(conn_id: str, ident: str) -> None:
        print(f"# {ident} disconnected", file=sys.stderr, flush=True)

    peer.messaging.on_message_recv.add(on_recv)
    peer.messaging.on_connect.add(on_connect)
    peer.messaging.on_disconnect.add(on_disconnect)
    try:
        _start(peer, args, ssl_config)
        if not received.wait(args.timeout):
            return EXIT_TIMEOUT if args.count else EXIT_OK
        if reader_gone:
            # nothing more can be written; keep the interpreter's final flush quiet
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        peer.close()


class _Sightings:
    """What a sender saw of the network, to explain an undelivered message."""

    def __init__(self, peer: Peer) -> None:
        self.lock = threading.Lock()
        self.opened = 0  # TCP (and TLS) connections made
        self.identified: dict[str, str] = {}  # ident -> remote address
        self.errors: list[str] = []
        self._addresses: dict[str, str] = {}
        self._link = peer.link
        peer.link.on_connect.add(self._on_link_connect)
        peer.messaging.on_connect.add(self._on_identified)
        peer.messaging.on_error.add(self._on_error)

    def _on_link_connect(self, conn_id: str) -> None:
        with self.lock:
            self.opened += 1
            remote = self._link.remote_address(conn_id)
            if remote is not None:
                self._addresses[conn_id] = f"{remote[0]}:{remote[1]}"

    def _on_identified(self, conn_id: str, ident: str) -> None:
        with self.lock:
            self.identified[ident] = self._addresses.get(conn_id, conn_id)

    def _on_error(self, conn_id: str, exc: Exception) -> None:
        with self.lock:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def explain(self, target: str, tls: bool) -> list[str]:
        """Sentences that say what we know about why ``target`` did not answer."""
        with self.lock:
            lines = [
                f"connected to {address}, which identified as {ident!r}, not {target!r}"
                for ident, address in sorted(self.identified.items())
                if ident != target
            ]
            if target in self.identified:
                lines.append(f"{target!r} was connected but did not acknowledge in time")
            elif self.opened and not self.identified:
                lines.append(
                    f"{self.opened} connection(s) opened and closed before the peer identified: "
                    + (
                        "does it trust our certificate (--tls-ca), and we its?"
                        if tls
                        else "if it listens with TLS, give --tls-cert (and --tls-ca)"
                    )
                    + "; or it refused our identifier (see its log)"
                )
            elif not self.opened:
                lines.append("no connection could be made: nothing answered at the address")
            lines += [f"error reported: {text}" for text in self.errors[-3:]]
            return lines


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"--file {path!r}: {exc.strerror or exc}; check the path") from None


def _payloads(args: argparse.Namespace, stdin: BinaryIO | None) -> Iterator[bytes]:
    """The messages to send, in order: MESSAGE arguments, ``--file``s, or standard
    input (a line at a time as it arrives, or all of it with ``--raw``)."""
    if args.message:
        # os.fsencode: an argument that is not valid UTF-8 is sent as the bytes given
        sources: Iterable[bytes] = (os.fsencode(text) for text in args.message)
    elif args.file:
        sources = (_read_file(path) for path in args.file)
    elif stdin is None:
        return
    elif args.raw:
        sources = iter([stdin.read()])
    else:
        sources = (line[:-1] if line.endswith(b"\n") else line for line in stdin)
    for payload in sources:
        for _ in range(args.count):
            yield payload


def cmd_send(args: argparse.Namespace, out: TextIO) -> int:
    if args.persistent and not args.storage:
        raise UsageError("--persistent needs --storage FILE to keep the messages in")
    if args.message and args.file:
        raise UsageError("give MESSAGE arguments or --file, not both")
    if args.raw and (args.message or args.file):
        raise UsageError("--raw reads standard input: give no MESSAGE and no --file")
    if args.to == args.ident:
        raise UsageError(
            f"--to {args.to!r} is this peer's own identifier (--ident): a message to it is "
            "never delivered; name the receiving peer"
        )
    ssl_config = ssl_config_from(args)
    for path in args.file:
        readable_file(path, "--file")
    stdin: BinaryIO | None = None
    if not args.message and not args.file and not sys.stdin.isatty():
        stdin = sys.stdin.buffer
    peer = Peer(args.ident, args.storage)
    target = args.to
    done = threading.Condition()
    waiting: set[bytes] = {m.uuid for m in peer.messaging.queued(target)}
    dropped: list[bytes] = []
    total = len(waiting)

    def on_delivered(ident: str, uuid: bytes) -> None:
        with done:
            waiting.discard(uuid)
            done.notify_all()

    def on_drop(ident: str, uuid: bytes) -> None:
        with done:
            if uuid in waiting:
                waiting.discard(uuid)
                dropped.append(uuid)
            done.notify_all()

    peer.messaging.on_message_delivered.add(on_delivered)
    peer.messaging.on_message_drop.add(on_drop)
    seen = _Sightings(peer)
    try:
        _start(peer, args, ssl_config)
        flags = FLAG_PERSISTENT if args.persistent else 0
        ttl = None if args.ttl is not None and args.ttl < 0 else args.ttl
        first = True
        for payload in _payloads(args, stdin):
            if not first and args.interval:
                time.sleep(args.interval)
            first = False
            message = Message(payload, ttl=ttl, flags=flags)
            with done:
                waiting.add(message.uuid)
                total += 1
            peer.messaging.send_message(target, message)
        where = f" (stored in {args.storage})" if args.persistent else ""
        print(f"# queued {total} message(s) for {target}{where}", file=sys.stderr, flush=True)
        deadline = time.monotonic() + args.timeout
        last_report = 0.0
        with done:
            while waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                now = time.monotonic()
                if total > 100 and now - last_report > 1:
                    print(f"# {total - len(waiting)}/{total} acknowledged", file=sys.stderr)
                    last_report = now
                done.wait(min(remaining, 1.0))
        if dropped:
            print(
                f"error: {len(dropped)} message(s) to {target} dropped: their TTL ran out "
                "before the peer connected (raise --ttl)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        if waiting:
            where_to = ", ".join(args.connect) or "(no --connect given)"
            if args.listen is not None:
                where_to += f", or dialling us at {args.listen}"
            print(
                f"error: {len(waiting)} of {total} message(s) not acknowledged by {target} "
                f"within {args.timeout:g} s; is {target} running and reachable at {where_to}?"
                + (" They stay queued in the storage." if args.persistent else ""),
                file=sys.stderr,
            )
            for line in seen.explain(target, tls=ssl_config is not None):
                print(f"  {line}", file=sys.stderr)
            return EXIT_TIMEOUT
        print(f"# {total} message(s) acknowledged by {target}", file=sys.stderr)
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_FAILED
    finally:
        peer.close()


def cmd_queues(args: argparse.Namespace, out: TextIO) -> int:
    from snakemq_proto import StorageBatch

    from snakemq.storage.sqla import SqlAlchemyQueuesStorage
    from snakemq.storage.sqlite import SqliteQueuesStorage

    storage: SqliteQueuesStorage | SqlAlchemyQueuesStorage
    try:
        if "://" in args.file:  # a database shared by peers: one peer's queues
            if not args.ident:
                raise UsageError("a database URL holds the queues of several peers: give --ident")
            # only purging needs the peer stopped (its lease); showing does not
            storage = SqlAlchemyQueuesStorage(
                args.file, ident=args.ident, lease=args.purge is not None
            )
        elif not os.path.isfile(args.file):
            raise UsageError(f"storage file {args.file!r} does not exist")
        else:
            storage = SqliteQueuesStorage(args.file)
    except StorageError as exc:
        raise UsageError(str(exc)) from None
    try:
        state = storage.load()
        if args.purge is not None:
            messages = state.queues.get(args.purge, [])
            storage.apply(StorageBatch(delete=[m.uuid for m in messages]))
            if args.json:
                print(json.dumps({"purged": len(messages), "peer": args.purge}), file=out)
            else:
                print(f"purged {len(messages)} message(s) queued for {args.purge}", file=out)
            return EXIT_OK
        if args.json:
            for ident, messages in sorted(state.queues.items()):
                ttls = [m.ttl for m in messages if m.ttl is not None]
                record = {
                    "peer": ident,
                    "messages": len(messages),
                    "bytes": sum(len(m.data) for m in messages),
                    "soonest_ttl": min(ttls) if ttls else None,
                }
                print(json.dumps(record), file=out)
            return EXIT_OK
        if not state.queues:
            print("no queued messages", file=out)
            return EXIT_OK
        print(f"{'peer':<24} {'messages':>9} {'bytes':>12}  soonest TTL", file=out)
        for ident, messages in sorted(state.queues.items()):
            ttls = [m.ttl for m in messages if m.ttl is not None]
            soonest = f"{min(ttls):.0f} s" if ttls else "inf"
            size = sum(len(m.data) for m in messages)
            print(f"{ident:<24} {len(messages):>9} {size:>12}  {soonest}", file=out)
        return EXIT_OK
    finally:
        storage.close()


def cmd_bench(args: argparse.Namespace, out: TextIO) -> int:
    from snakemq._clibench import run_bench

    return run_bench(args.count, args.size, out)


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from snakemq._demo import run_demo

    return run_demo(out)


_EPILOGS = {
    "listen": """examples:
  snakemq listen --ident bob --listen 4000
  snakemq listen --ident bob --listen 127.0.0.1:4000 --storage bob.db --json
  snakemq listen --ident bob --connect 127.0.0.1:4000 --raw > payloads.txt
  snakemq listen --ident bob --listen 4000 --tls-cert bob.pem --tls-key bob.key --tls-ca ca.pem
output: one line per message, "IDENT UUID ttl=TTL TEXT" (base64:... if not UTF-8);
  --json: JSON lines {"from", "uuid", "ttl", "flags", "data" or "data_base64"};
  --raw: the payload bytes as they are, each followed by a newline.
  Status lines ("# ...") go to standard error.""",
    "send": """examples:
  snakemq send --ident alice --connect 127.0.0.1:4000 --to bob hello world
  seq 100 | snakemq send --ident alice --connect 127.0.0.1:4000 --to bob
  tail -f app.log | snakemq send --ident alice --connect 127.0.0.1:4000 --to bob
  snakemq send --ident alice --connect 127.0.0.1:4000 --to bob --file photo.jpg
  snakemq send --ident alice --connect 127.0.0.1:4000 --to bob --raw < blob.bin
  snakemq send --ident alice --connect 127.0.0.1:4000 --to bob --count 10 --interval 0.5 tick
  snakemq send --ident alice --listen 4001 --to bob "bob dials us"
  snakemq send --ident alice --connect 127.0.0.1:4000 --to bob --ttl 600 \\
      --persistent --storage alice.db "kept until bob acknowledges it"
  (no MESSAGE and no stdin: delivers what the storage still holds for --to)
standard input is read a line at a time and each line is sent as it arrives
(without its newline); the command then waits for the acknowledgements.""",
    "queues": """examples:
  snakemq queues alice.db
  snakemq queues alice.db --json
  snakemq queues alice.db --purge bob""",
    "bench": """examples:
  snakemq bench
  snakemq bench --count 200000 --size 100""",
    "demo": """examples:
  snakemq demo""",
}

_EXIT_CODES = """exit codes: 0 success, 1 a message was dropped or a step failed,
  2 timeout (a message not acknowledged in time), 64 bad usage or configuration."""


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 64 (EX_USAGE), not argparse's 2, which means "timeout" here."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number, ``minimum`` or more."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: give {minimum} or more")
        return value

    return parse


_positive_int = _whole_number(1)
_count_or_zero = _whole_number(0)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 or more seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``snakemq`` argument parser (usage errors exit 64)."""
    parser = _Parser(
        prog="snakemq",
        description="Brokerless, reliable messaging between peers: listen, send, inspect, measure.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"snakemq {snakemq.__version__} (snakemq-proto {snakemq_proto.__version__}, "
        f"Python {sys.version.split()[0]})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _Parser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more on standard error: -v connections and info, -vv debug",
    )

    def add(
        name: str, help_: str, func: Callable[[argparse.Namespace, TextIO], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=_EPILOGS[name] + "\n" + _EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        p.set_defaults(func=func)
        return p

    p = add("listen", "print every message received", cmd_listen)
    p.add_argument("--ident", required=True, help="this peer's identifier")
    p.add_argument("--listen", metavar="[HOST:]PORT", help="address to listen on")
    p.add_argument("--connect", action="append", default=[], metavar="HOST:PORT", help="also dial")
    p.add_argument(
        "--storage",
        metavar="FILE",
        help="SQLite file or database URL for queues and de-duplication",
    )
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="one JSON object per line and message")
    shown.add_argument("--raw", action="store_true", help="the payload only, then a newline")
    shown.add_argument("--quiet", action="store_true", help="count messages without printing them")
    p.add_argument(
        "--count", type=_count_or_zero, default=0, help="exit after this many messages (0: never)"
    )
    p.add_argument("--timeout", type=_seconds, default=None, help="exit after this many seconds")
    _add_tls_options(p)

    p = add("send", "send messages and wait until they are acknowledged", cmd_send)
    p.add_argument("--ident", required=True, help="this peer's identifier")
    p.add_argument(
        "--connect", action="append", default=[], metavar="HOST:PORT", help="peer to dial"
    )
    p.add_argument("--listen", metavar="[HOST:]PORT", help="also listen (the peer may dial us)")
    p.add_argument("--to", required=True, help="identifier of the receiving peer")
    p.add_argument(
        "--ttl", type=float, default=60.0, help="seconds a message may wait; -1 = forever"
    )
    p.add_argument("--persistent", action="store_true", help="store messages until acknowledged")
    p.add_argument(
        "--storage", metavar="FILE", help="SQLite file or database URL (needed by --persistent)"
    )
    p.add_argument(
        "--timeout", type=_seconds, default=30.0, help="seconds to wait for acknowledgements"
    )
    p.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="FILE",
        help="send FILE's bytes as one message",
    )
    p.add_argument("--raw", action="store_true", help="send all of standard input as one message")
    p.add_argument("--count", type=_positive_int, default=1, help="send each message N times")
    p.add_argument(
        "--interval", type=_seconds, default=0.0, help="seconds to wait between two sends"
    )
    p.add_argument("message", nargs="*", help="messages to send (default: one per stdin line)")
    _add_tls_options(p)

    p = add("queues", "show (or purge) the queues of a storage file", cmd_queues)
    p.add_argument("file", help="SQLite storage file or database URL")
    p.add_argument("--ident", help="whose queues, in a database URL")
    p.add_argument("--purge", metavar="PEER", help="delete every message queued for PEER")
    p.add_argument("--json", action="store_true", help="one JSON object per line and peer")

    p = add("bench", "quick throughput run of this installation", cmd_bench)
    p.add_argument("--count", type=_positive_int, default=100_000, help="messages to send")
    p.add_argument("--size", type=_count_or_zero, default=100, help="payload bytes per message")

    add("demo", "show what snakemq does, step by step (exits 0 if every step worked)", cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snakemq`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    snakemq.init_logging(sys.stderr, logging.WARNING - 10 * min(args.verbose, 2))
    try:
        result: int = args.func(args, sys.stdout)
        return result
    except UsageError as exc:
        print(f"snakemq {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SnakeMQError as exc:
        print(f"snakemq {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
