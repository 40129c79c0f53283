"""The `fastgear` command: argv -> Config -> a subcommand.

`fastgear serve` takes gearmand 1.1.20's flags, built from `config.OPTIONS`, with
gearmand's rules: no abbreviated long options, each option at most once, options from
`--config-file` (or `@file`) filling in whatever the command line did not set. Every
subcommand registers itself in `COMMANDS`, so `bench` and `admin` slot in beside `serve`.
A command line `serve` refuses exits with status 1, as gearmand's does.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fastgear import GEARMAND_COMPAT_VERSION, __version__, config
from fastgear.config import ConfigError

VERSION = f"fastgear {__version__} (gearmand {GEARMAND_COMPAT_VERSION} compatible)"


class Parser(argparse.ArgumentParser):
    """Reports errors as ConfigError so they are printed one way: `serve` exits with 1,
    as gearmand does on a bad command line, the rest with argparse's usage status 2."""

    def error(self, message: str):
        raise ConfigError(message)


class Store(argparse.Action):
    """Parses one OPTIONS row's value and, like boost::program_options, refuses repeats."""

    def __init__(self, option_strings, dest, row: config.Option, **kwargs):
        self.row = row
        super().__init__(option_strings, dest, nargs=None if row.takes_value else 0,
                         default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        name = "--" + self.row.long
        if hasattr(namespace, self.dest):
            parser.error(f"option '{name}' cannot be specified more than once")
        if not self.row.takes_value:
            setattr(namespace, self.dest, True)
            return
        try:
            value = self.row.parse(values)
        except ValueError:
            parser.error(f"the argument ('{values}') for option '{name}' is invalid")
        setattr(namespace, self.dest, value)


def add_option_rows(parser: argparse.ArgumentParser) -> None:
    for row in config.OPTIONS:
        names = (["-" + row.short] if row.short else []) + ["--" + row.long]
        text = row.help
        if row.default not in (None, False, ()):
            text += f" (default: {row.default})"
        if row.long == "check-args":
            text = argparse.SUPPRESS  # hidden in gearmand too
        parser.add_argument(*names, dest=row.field, action=Store, row=row, help=text,
                            metavar="ARG")


# Which tokens consume the next one as their value; needed to tell `@file` from a value.
_LONG_WITH_VALUE = {"--" + o.long for o in config.OPTIONS if o.takes_value}
_SHORT_WITH_VALUE = {o.short for o in config.OPTIONS if o.short and o.takes_value}
_SHORT_FLAGS = {o.short for o in config.OPTIONS if o.short and not o.takes_value} | {"h", "V"}


def _wants_next_token(token: str) -> bool:
    if token.startswith("--"):
        return token in _LONG_WITH_VALUE
    if token.startswith("-") and len(token) > 1:
        for i, char in enumerate(token[1:], 1):
            if char in _SHORT_WITH_VALUE:
                return i == len(token) - 1  # otherwise the value is attached: -p4730
            if char not in _SHORT_FLAGS:
                return False
    return False


def expand_at_files(argv: Sequence[str]) -> list[str]:
    """Turn gearmand's `@name` into `--config-file name`, leaving option values alone."""
    out: list[str] = []
    value_next = False
    for token in argv:
        if not value_next and token.startswith("@") and len(token) > 1:
            out += ["--config-file", token[1:]]
            continue
        out.append(token)
        value_next = not value_next and _wants_next_token(token)
    return out


def read_config_file(path: str) -> list[str] | None:
    """Whitespace-separated tokens, as gearmand reads them; a missing default file is fine."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().split()
    except OSError as exc:
        if path == config.DEFAULT_CONFIG_FILE:  # even when named explicitly, like gearmand
            return None
        raise ConfigError(f"--config-file {path}: could not open configuration file "
                          f"({exc.strerror})") from None


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> dict[str, Any]:
    namespace = parser.parse_args(argv)
    return {k: v for k, v in vars(namespace).items() if k in config.OPTIONS_BY_FIELD}


def serve_parser() -> argparse.ArgumentParser:
    subparsers = Parser(prog="fastgear").add_subparsers(parser_class=Parser)
    add_serve(subparsers)
    return subparsers.choices["serve"]


def config_from_argv(argv: Sequence[str], environ=None,
                     parser: argparse.ArgumentParser | None = None) -> config.Config:
    """Command line first, then the config file for what it left unset; not validated."""
    parser = parser or serve_parser()
    given = given_options(parser, expand_at_files(argv))
    path = given.get("config_file", config.DEFAULT_CONFIG_FILE)
    tokens = read_config_file(path)
    if tokens:
        try:
            from_file = given_options(parser, tokens)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        from_file.pop("config_file", None)  # gearmand does not follow nested files
        given = {**from_file, **given}
    return config.build(given, os.environ if environ is None else environ)


def check_tls_files(cfg) -> str | None:
    """--check-args with TLS: open the certificate, key and CA file as serving would, so
    an unreadable, encrypted or mismatched key is found before a deployment, not at its
    start. Python's ssl module reads them here (the server itself uses OpenSSL from the
    C loop); only paths and OpenSSL's reasons are reported, never file contents."""
    if not (cfg.ssl or cfg.ssl_port is not None):
        return None
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An encrypted key would make OpenSSL prompt on the terminal: an empty
        # password makes it fail instead, as the server's start-up does.
        ctx.load_cert_chain(cfg.ssl_certificate, cfg.ssl_key, password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        return (f"--ssl-certificate {cfg.ssl_certificate} / --ssl-key {cfg.ssl_key}: "
                f"{getattr(exc, 'strerror', None) or exc}")
    if cfg.ssl_ca_file:
        try:
            ctx.load_verify_locations(cfg.ssl_ca_file)
        except (OSError, ssl.SSLError) as exc:
            return f"--ssl-ca-file {cfg.ssl_ca_file}: {getattr(exc, 'strerror', None) or exc}"
    return None


def run_serve(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    try:
        cfg = config.validate(config_from_argv(argv, parser=parser))
    except ConfigError as exc:
        # gearmand's status for every bad command line; init scripts test for it.
        print(f"fastgear: error: {exc}", file=sys.stderr)
        return 1
    if cfg.check_args:
        problem = check_tls_files(cfg)
        if problem:
            print(f"fastgear: error: {problem}", file=sys.stderr)
            return 1
        return 0
    from fastgear import server  # the compiled core is only needed to actually serve
    return server.run(cfg)


def add_serve(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", allow_abbrev=False, help="run the job server (gearmand's flags)",
        description="Run the Gearman job server. Flags, short names and defaults are "
                    f"gearmand {GEARMAND_COMPAT_VERSION}'s.")
    parser.add_argument("-V", "--version", action="version", version=VERSION,
                        help="Display the version and exit.")
    add_option_rows(parser)
    parser.set_defaults(handler=run_serve, subparser=parser)


def run_bench(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from fastgear import bench  # its own parser handles every option, --help included
    return bench.main(list(argv), prog="fastgear bench")


def add_bench(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", add_help=False, help="load generator: benchmark a Gearman server, or "
                                      "compare fastgear with gearmand (--help for options)")
    parser.set_defaults(handler=run_bench, subparser=parser)


def run_admin(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from fastgear import admin_client  # its own parser: `-h` is the host, as in gearadmin
    return admin_client.main(list(argv), prog="fastgear admin")


def add_admin(subparsers) -> None:
    parser = subparsers.add_parser(
        "admin", add_help=False, help="what gearadmin does (--status, --workers, ...), "
                                      "against fastgear or gearmand, plus --json output")
    parser.set_defaults(handler=run_admin, subparser=parser)


# Each entry adds one subcommand; its parser's defaults name the handler and the parser.
COMMANDS: list[Callable[[Any], None]] = [add_serve, add_bench, add_admin]


def make_parser() -> Parser:
    parser = Parser(prog="fastgear", allow_abbrev=False,
                    description="fastgear, a Gearman job server compatible with gearmand "
                                f"{GEARMAND_COMPAT_VERSION}.")
    parser.add_argument("-V", "--version", action="version", version=VERSION)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=Parser)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    try:
        # Only the subcommand name is parsed here: its handler re-parses its own tokens,
        # because `serve` must parse the command line and the config file separately.
        if not argv or argv[0].startswith("-"):
            parser.parse_args(argv)
            parser.print_usage(sys.stderr)
            return 2
        known, _ = parser.parse_known_args(argv[:1])
        return known.handler(known.subparser, argv[1:])
    except ConfigError as exc:
        print(f"fastgear: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
