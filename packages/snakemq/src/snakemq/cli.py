"""The ``snakemq`` command: listen, send, inspect queues, benchmark, demo.

Every subcommand is a thin user of the public sync API (``Link``,
``Packeter``, ``Messaging``); ``snakemq <command> --help`` has examples.
Exit codes: 0 success, 1 a message was dropped or a step failed, 2 a timeout,
64 bad usage or configuration (a message says what to fix).
"""

from __future__ import annotations

import argparse
import base64
import errno
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from snakemq_proto import SnakeMQError, StorageError

import snakemq.link
import snakemq.messaging
import snakemq.packeter
from snakemq.message import FLAG_PERSISTENT, Message

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 2
EXIT_USAGE = 64


class UsageError(Exception):
    """A problem with the command line or its files; the text says the fix."""


def parse_address(text: str, *, default_host: str = "", what: str = "address") -> tuple[str, int]:
    """Parse ``[HOST:]PORT`` (``[::1]:4000`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{what} {text!r} is not [HOST:]PORT with a port from 0 to 65535")
    if not host and not default_host and what != "--listen":
        raise UsageError(f"{what} {text!r} needs a host, e.g. 127.0.0.1:{port}")
    return host, int(port)


def _readable(path: str, option: str) -> str:
    if not os.path.isfile(path):
        raise UsageError(f"{option} {path!r}: no such file; check the path")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{option} {path!r}: not readable by this user")
    return path


def ssl_config_from(args: argparse.Namespace) -> snakemq.link.SSLConfig | None:
    if not (args.tls_cert or args.tls_key or args.tls_ca):
        return None
    if not args.tls_cert:
        raise UsageError("TLS needs --tls-cert (and --tls-key unless the key is in the cert file)")
    import ssl

    cert = _readable(args.tls_cert, "--tls-cert")
    key = _readable(args.tls_key, "--tls-key") if args.tls_key else None
    ca = _readable(args.tls_ca, "--tls-ca") if args.tls_ca else None
    cfg = snakemq.link.SSLConfig(
        key,
        cert,
        cert_reqs=ssl.CERT_REQUIRED if ca else ssl.CERT_NONE,
        ca_certs=ca,
        bind_ident=bool(ca and args.tls_bind_ident),
    )
    try:
        cfg.server_context()
        cfg.client_context()
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS files ({cert}, {key}, {ca}): {exc}") from None
    return cfg


class Peer:
    """One messaging peer with its loop running in a background thread."""

    def __init__(self, ident: str, storage_path: str | None = None) -> None:
        self.storage: Any = None
        if storage_path is not None:
            from snakemq_proto import storage_at

            try:  # an SQLite file or a database URL
                self.storage = storage_at(storage_path)
            except StorageError as exc:
                raise UsageError(str(exc)) from None
        self.link = snakemq.link.Link()
        self.packeter = snakemq.packeter.Packeter(self.link)
        self.messaging = snakemq.messaging.Messaging(ident, "", self.packeter, self.storage)
        self._thread: threading.Thread | None = None

    def listen(
        self, address: tuple[str, int], ssl_config: snakemq.link.SSLConfig | None
    ) -> tuple[str, int]:
        try:
            bound = self.link.add_listener(address, ssl_config=ssl_config)
        except OSError as exc:
            host = address[0] or "all interfaces"
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"port {address[1]} on {host} is in use: pick another --listen port "
                    "or stop the process that holds it"
                ) from None
            raise UsageError(
                f"cannot listen on {host}:{address[1]}: {exc.strerror or exc}"
            ) from None
        return (bound[0], bound[1])

    def connect(self, address: tuple[str, int], ssl_config: snakemq.link.SSLConfig | None) -> None:
        self.link.add_connector(address, ssl_config=ssl_config)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.link.loop, name="snakemq-loop", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.link.stop()
        if self._thread is not None:
            self._thread.join(10)
        self.link.cleanup()
        if self.storage is not None:
            self.storage.close()


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


def cmd_listen(args: argparse.Namespace, out: TextIO) -> int:
    ssl_config = ssl_config_from(args)
    peer = Peer(args.ident, args.storage)
    received = threading.Event()
    count = 0
    lock = threading.Lock()

    def on_recv(conn_id: str, ident: str, message: Message) -> None:
        nonlocal count
        with lock:
            if not args.quiet:
                print(_render(ident, message, args.json), file=out, flush=True)
            count += 1
            if args.count and count >= args.count:
                received.set()

    def on_connect(conn_id: str, ident: str) -> None:
        if not args.json:
            print(f"# {ident} connected", file=sys.stderr, flush=True)

    peer.messaging.on_message_recv.add(on_recv)
    peer.messaging.on_connect.add(on_connect)
    try:
        bound = peer.listen(parse_address(args.listen, what="--listen"), ssl_config)
        for target in args.connect:
            peer.connect(parse_address(target, what="--connect"), ssl_config)
        print(f"# {args.ident} listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
        peer.start()
        if not received.wait(args.timeout):
            return EXIT_TIMEOUT if args.count else EXIT_OK
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        peer.close()


def cmd_send(args: argparse.Namespace, out: TextIO) -> int:
    if args.persistent and not args.storage:
        raise UsageError("--persistent needs --storage FILE to keep the messages in")
    ssl_config = ssl_config_from(args)
    texts: list[str] = list(args.message)
    if not texts and not sys.stdin.isatty():
        texts = [line.rstrip("\n") for line in sys.stdin]
    peer = Peer(args.ident, args.storage)
    target = args.to
    done = threading.Condition()
    waiting: set[bytes] = {m.uuid for m in peer.messaging.queued(target)}
    dropped: list[bytes] = []

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
    try:
        for target_addr in args.connect:
            peer.connect(parse_address(target_addr, what="--connect"), ssl_config)
        flags = FLAG_PERSISTENT if args.persistent else 0
        ttl = None if args.ttl is not None and args.ttl < 0 else args.ttl
        peer.start()
        for text in texts:
            message = Message(text.encode("utf-8"), ttl=ttl, flags=flags)
            with done:
                waiting.add(message.uuid)
            peer.messaging.send_message(target, message)
        total = len(waiting) + len(dropped)
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
            print(
                f"error: {len(waiting)} of {total} message(s) not acknowledged by {target} "
                f"within {args.timeout:g} s; is {target} running and reachable at "
                f"{', '.join(args.connect) or '(no --connect given)'}?"
                + (" They stay queued in the storage." if args.persistent else ""),
                file=sys.stderr,
            )
            return EXIT_TIMEOUT
        print(f"# {total} message(s) acknowledged by {target}", file=sys.stderr)
        return EXIT_OK
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
            print(f"purged {len(messages)} message(s) queued for {args.purge}", file=out)
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
  snakemq listen --ident bob --listen 4000 --tls-cert bob.pem --tls-key bob.key --tls-ca ca.pem""",
    "send": """examples:
  snakemq send --ident alice --connect 127.0.0.1:4000 --to bob hello world
  seq 100 | snakemq send --ident alice --connect 127.0.0.1:4000 --to bob
  snakemq send --ident alice --connect 127.0.0.1:4000 --to bob --ttl 600 \\
      --persistent --storage alice.db "kept until bob acknowledges it"
  (no MESSAGE and no stdin: delivers what the storage still holds for --to)""",
    "queues": """examples:
  snakemq queues alice.db
  snakemq queues alice.db --purge bob""",
    "bench": """examples:
  snakemq bench
  snakemq bench --count 200000 --size 100""",
    "demo": """examples:
  snakemq demo""",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snakemq",
        description="Brokerless, reliable messaging between peers: listen, send, inspect, measure.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, help_: str, func: Callable[[argparse.Namespace, TextIO], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=_EPILOGS[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    p = add("listen", "print every message received", cmd_listen)
    p.add_argument("--ident", required=True, help="this peer's identifier")
    p.add_argument("--listen", required=True, metavar="[HOST:]PORT", help="address to listen on")
    p.add_argument("--connect", action="append", default=[], metavar="HOST:PORT", help="also dial")
    p.add_argument(
        "--storage",
        metavar="FILE",
        help="SQLite file or database URL for queues and de-duplication",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.add_argument("--quiet", action="store_true", help="count messages without printing them")
    p.add_argument("--count", type=int, default=0, help="exit after this many messages")
    p.add_argument("--timeout", type=float, default=None, help="exit after this many seconds")
    _add_tls_options(p)

    p = add("send", "send messages and wait until they are acknowledged", cmd_send)
    p.add_argument("--ident", required=True, help="this peer's identifier")
    p.add_argument(
        "--connect", action="append", default=[], metavar="HOST:PORT", help="peer to dial"
    )
    p.add_argument("--to", required=True, help="identifier of the receiving peer")
    p.add_argument(
        "--ttl", type=float, default=60.0, help="seconds a message may wait; -1 = forever"
    )
    p.add_argument("--persistent", action="store_true", help="store messages until acknowledged")
    p.add_argument(
        "--storage", metavar="FILE", help="SQLite file or database URL (needed by --persistent)"
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for acknowledgements"
    )
    p.add_argument("message", nargs="*", help="messages to send (default: one per stdin line)")
    _add_tls_options(p)

    p = add("queues", "show (or purge) the queues of a storage file", cmd_queues)
    p.add_argument("file", help="SQLite storage file or database URL")
    p.add_argument("--ident", help="whose queues, in a database URL")
    p.add_argument("--purge", metavar="PEER", help="delete every message queued for PEER")

    p = add("bench", "quick throughput run of this installation", cmd_bench)
    p.add_argument("--count", type=int, default=100_000, help="messages to send")
    p.add_argument("--size", type=int, default=100, help="payload bytes per message")

    add("demo", "show what snakemq does, step by step (exits 0 if every step worked)", cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snakemq`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args, sys.stdout)
        return result
    except UsageError as exc:
        print(f"snakemq {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SnakeMQError as exc:
        print(f"snakemq {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
