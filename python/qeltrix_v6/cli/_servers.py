"""``qeltrix serve``, ``qeltrix gateway`` and ``qeltrix recover`` (registered on the CLI app)."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
from typing import Annotated, Any

import typer

from .. import _container, _signed_url, _store
from .._pubkeys import decode_public_key
from .._service import split_hostport
from ..errors import QeltrixError
from ..gateway import MODES, GatewayServer
from ..server import (
    ACCESS_LOG_FORMATS,
    DEFAULT_CACHE_CONTROL,
    SeekServer,
    check_cache_control,
    check_cors_origin,
    served_reader,
)
from ._app import (
    PASSPHRASE_ENV,
    CliError,
    ExitCode,
    _Terminated,
    app,
)
from ._credentials import (
    Credentials,
    _can_prompt,
    _explicit_credentials,
    _prompt_passphrase,
    credentials_for_reading,
    kms_config,
    read_key_file,
)
from ._options import (
    PANEL_ADV,
    PANEL_KEY,
    AllowIncompleteOpt,
    DebugOpt,
    ForceOpt,
    IdentityOpt,
    KeyFileOpt,
    KmsDiscoveryOpt,
    KmsEndpointOpt,
    KmsKeyIdOpt,
    PassphraseFileOpt,
    PassphraseTrap,
    QuietOpt,
    SignerOpt,
    SignersFileOpt,
    SignWithOpt,
    _refuse_passphrase_value,
    parse_size,
    read_signing_key,
    signers_from_options,
)
from ._output import (
    _check_input,
    _check_output,
    _status,
)

TOKEN_ENV = "QELTRIX_TOKEN"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}

# `serve` and `gateway` expose their counters the same way.
MetricsOpt = Annotated[
    str | None,
    typer.Option(
        "--metrics",
        metavar="HOST:PORT",
        help="Serve Prometheus /metrics and /healthz on this address (keep it private).",
        rich_help_panel=PANEL_ADV,
    ),
]


_DURATION = re.compile(r"([0-9]{1,9})([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_URL_LIFETIME = 3650 * 86400


def parse_duration(text: str) -> int:
    """Seconds in ``30s``, ``10m``, ``2h``, ``7d`` or a bare number of seconds (at most ten years)."""
    m = _DURATION.fullmatch(text.strip().lower())
    seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)] if m else 0
    if not 0 < seconds <= MAX_URL_LIFETIME:
        raise CliError(
            f"--expires: {text!r} is not a duration between 1 second and 3650 days",
            hint="use e.g. 30s, 10m, 2h or 7d",
            code=ExitCode.USAGE,
        )
    return seconds


UrlKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--url-key",
        metavar="FILE",
        help="Key file (32 bytes, from 'qeltrix keygen -o FILE') for signed URLs; see 'qeltrix sign-url'.",
        rich_help_panel=PANEL_KEY,
    ),
]


def _read_url_key(path: str) -> bytes:
    try:
        return read_key_file(path)
    except CliError as e:
        e.message = f"--url-key: {e.message}"
        raise


def _logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


class _SeekServer(SeekServer):
    """A SeekServer that also opens containers with identities and through a KMS."""

    def __init__(self, root: str, *, creds: Credentials, **kwargs: Any) -> None:
        # SeekServer insists on a key or passphrase; "" stands for "none" and is never tried.
        super().__init__(
            root, key=creds.key, passphrase=creds.passphrase if creds.passphrase is not None else "", **kwargs
        )
        self._creds = creds

    def _open_container(self, path: str, whole: bool = False) -> Any:
        opened = _container.open_reader(
            path, **self._creds.kwargs(), block_cache=self._block_cache, signers=self._signers, whole=whole
        )
        return served_reader(opened, self._allow_incomplete)


def _serve_credentials(
    key_file: str | None,
    passphrase_file: str | None,
    identity: list[str] | None = None,
    kms_endpoint: str | None = None,
    kms_key_ids: list[str] | None = None,
    kms_discovery: bool = False,
) -> Credentials:
    creds = _explicit_credentials(key_file, passphrase_file, identity)
    if kms_endpoint or kms_key_ids or kms_discovery:
        creds.kms = kms_config(kms_endpoint, key_ids=kms_key_ids, discovery=kms_discovery)
    if creds.given():
        return creds
    if not _can_prompt():
        raise CliError(
            "no key given to open the containers",
            hint=f"use --key-file FILE, --identity ID_FILE, --passphrase-file FILE or set {PASSPHRASE_ENV}",
            code=ExitCode.USAGE,
        )
    creds.passphrase = _prompt_passphrase("Passphrase for the containers: ", what="the served containers")
    return creds


def _read_token(token: str | None, token_file: str | None) -> str | None:
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                value = f.readline().strip()
        except OSError as e:
            raise CliError(f"{token_file}: {e.strerror}", code=ExitCode.IO) from None
        if not value:
            raise CliError(f"{token_file} holds no token", code=ExitCode.USAGE)
        return value
    return token or os.environ.get(TOKEN_ENV) or None


@app.command(rich_help_panel="Servers")
def serve(
    root: Annotated[
        str, typer.Argument(metavar="ROOT", help="Directory of containers to serve, or s3://BUCKET/PREFIX.")
    ],
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to bind. Plaintext leaves here: keep 127.0.0.1 unless you use --token and TLS."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0 picks a free one).")] = 8080,
    key_file: KeyFileOpt = None,
    passphrase_file: PassphraseFileOpt = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help=f"Require 'Authorization: Bearer TOKEN'. Prefer --token-file or ${TOKEN_ENV} (shows in ps).",
            rich_help_panel=PANEL_KEY,
        ),
    ] = None,
    token_file: Annotated[
        str | None,
        typer.Option(
            "--token-file", metavar="FILE", help="File whose first line is the bearer token.", rich_help_panel=PANEL_KEY
        ),
    ] = None,
    tls_cert: Annotated[
        str | None,
        typer.Option("--tls-cert", metavar="PEM", help="TLS certificate chain (PEM).", rich_help_panel=PANEL_ADV),
    ] = None,
    tls_key: Annotated[
        str | None, typer.Option("--tls-key", metavar="PEM", help="TLS private key (PEM).", rich_help_panel=PANEL_ADV)
    ] = None,
    max_connections: Annotated[
        int, typer.Option("--max-connections", min=1, help="Concurrent connections.", rich_help_panel=PANEL_ADV)
    ] = 1024,
    max_connections_per_client: Annotated[
        int,
        typer.Option(
            "--max-connections-per-client",
            min=1,
            help="Concurrent connections from one client address; more are refused.",
            rich_help_panel=PANEL_ADV,
        ),
    ] = 64,
    access_log: Annotated[
        bool,
        typer.Option("--access-log", help="Log every response on stderr (combined log format), even with --quiet."),
    ] = False,
    access_log_format: Annotated[
        str | None,
        typer.Option(
            "--access-log-format",
            metavar="FORMAT",
            help="Access log lines: 'combined' (Apache/nginx, plus range and seconds) or 'json'; implies --access-log.",
            rich_help_panel=PANEL_ADV,
        ),
    ] = None,
    metrics: MetricsOpt = None,
    drain_timeout: Annotated[
        float,
        typer.Option(
            "--drain-timeout",
            min=0,
            metavar="SECONDS",
            help="On SIGTERM or Ctrl-C, stop accepting and let responses in flight finish this long.",
            rich_help_panel=PANEL_ADV,
        ),
    ] = 10.0,
    url_key: UrlKeyOpt = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            metavar="ORIGIN",
            help="Let pages from ORIGIN (scheme://host[:port], or * for any) read responses (repeatable).",
            rich_help_panel=PANEL_ADV,
        ),
    ] = None,
    cache_control: Annotated[
        str,
        typer.Option(
            "--cache-control", metavar="VALUE", help="Cache-Control of container responses.", rich_help_panel=PANEL_ADV
        ),
    ] = DEFAULT_CACHE_CONTROL,
    list_directories: Annotated[
        bool,
        typer.Option("--list", help="Answer GET /dir/ with the containers and subdirectories there (HTML or JSON)."),
    ] = False,
    block_cache: Annotated[
        int,
        typer.Option(
            "--block-cache",
            parser=parse_size,
            metavar="SIZE",
            help="Memory for decrypted blocks kept for reuse (seeking re-reads them); 0 turns it off.",
            rich_help_panel=PANEL_ADV,
        ),
    ] = "64MiB",  # type: ignore[assignment]
    identity: IdentityOpt = None,
    kms_endpoint: KmsEndpointOpt = None,
    kms_key_id: KmsKeyIdOpt = None,
    kms_discovery: KmsDiscoveryOpt = False,
    allow_incomplete: AllowIncompleteOpt = False,
    signer: SignerOpt = None,
    signers_file: SignersFileOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Serve plaintext byte ranges of the containers under ROOT over HTTP.

    GET /a/b.mp4 answers from ROOT/a/b.mp4.qltx, decrypting only the blocks each request
    needs (Range requests, multipart ranges, ETag/If-Range). A browser or media player can
    seek freely inside an encrypted video.

    [bold]Examples[/bold]

      qeltrix serve --key-file my.key ~/vault
      qeltrix serve --key-file my.key --host 0.0.0.0 --token-file token.txt --tls-cert c.pem --tls-key k.pem ~/vault
      qeltrix serve --identity me.id --signer qltx-ed25519:XyZ... ~/vault   # only what that key signed
      qeltrix serve --key-file my.key --url-key url.key --cors-origin https://app.example --list ~/vault

    With --signer/--signers-file only containers signed by a listed key are served, and every
    block is checked against the signature before it is sent; others get an error status.

    HTTP/1.1 and HTTP/2 (ALPN h2 with TLS, h2c with prior knowledge). SIGTERM drains: new
    connections are refused, responses in flight get --drain-timeout seconds, exit status 0.

    With --url-key, URLs made by 'qeltrix sign-url' are accepted until they expire, so a
    browser's <video src=...> works behind authorisation: beside --token either credential
    works; without --token every request needs a signed URL.
    """
    _refuse_passphrase_value(passphrase)
    signers = signers_from_options(signer, signers_file)
    if not os.path.isdir(root) and not _store.is_url(root):
        raise CliError(f"{root} is not a directory", code=ExitCode.IO)
    if (tls_cert is None) != (tls_key is None):
        raise CliError("--tls-cert and --tls-key go together", code=ExitCode.USAGE)
    if access_log_format is not None and access_log_format not in ACCESS_LOG_FORMATS:
        raise CliError(
            f"unknown --access-log-format {access_log_format!r}",
            hint=f"use one of: {', '.join(ACCESS_LOG_FORMATS)}",
            code=ExitCode.USAGE,
        )
    try:
        metrics_addr = split_hostport(metrics) if metrics is not None else None
    except ValueError as e:
        raise CliError(f"--metrics: {e}", code=ExitCode.USAGE) from None
    creds = _serve_credentials(key_file, passphrase_file, identity, kms_endpoint, kms_key_id, kms_discovery)
    bearer = _read_token(token, token_file)
    url_mac_key = _read_url_key(url_key) if url_key else None
    if url_mac_key is not None and url_mac_key == creds.key:
        raise CliError(
            "--url-key is the containers' key; a URL key must be a key of its own",
            hint="make one with 'qeltrix keygen -o url.key'",
            code=ExitCode.USAGE,
        )
    try:
        origins = [check_cors_origin(o) for o in cors_origin or []]
        cache_control = check_cache_control(cache_control)
    except ValueError as e:
        raise CliError(str(e), code=ExitCode.USAGE) from None
    _logging(quiet)
    log_format = access_log_format or ("combined" if access_log else None)
    if log_format is not None:
        # Asked for explicitly, so --quiet does not hide it.
        logging.getLogger("qeltrix_v6.server.access").setLevel(logging.INFO)
    unauthenticated = bearer is None and url_mac_key is None
    if host not in LOOPBACK and (unauthenticated or tls_cert is None):
        logging.getLogger("qeltrix_v6.server").warning(
            "serving plaintext on %s without %s: anyone who can reach it can read the containers",
            host,
            " and ".join(
                w for w, missing in (("--token or --url-key", unauthenticated), ("TLS", tls_cert is None)) if missing
            ),
        )
    server = _SeekServer(
        root,
        creds=creds,
        host=host,
        port=port,
        token=bearer,
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_connections=max_connections,
        max_connections_per_client=max_connections_per_client,
        access_log=log_format or False,
        block_cache=block_cache,
        allow_incomplete=allow_incomplete,
        signers=signers,
        metrics=metrics_addr,
        drain_timeout=drain_timeout,
        url_key=url_mac_key,
        cors_origins=origins,
        cache_control=cache_control,
        directory_listing=list_directories,
    )
    try:
        try:
            server.start()
        except OSError as e:
            raise CliError(f"cannot serve on {host}:{port}: {e}", code=ExitCode.IO) from None
        print(f"serving {root} on {server.url}", file=sys.stderr, flush=True)
        if server.metrics_url is not None:
            print(f"metrics on {server.metrics_url}/metrics", file=sys.stderr, flush=True)
        server.serve_forever()  # on SIGTERM/Ctrl-C it stops with a drain of --drain-timeout
    except (KeyboardInterrupt, _Terminated) as e:
        # SIGTERM (systemd, docker stop) and Ctrl-C are how a server is stopped: a clean exit
        # (status 0), even when the signal comes while it is still starting.
        server.stop()
        what = f"signal {e.signum}" if isinstance(e, _Terminated) else "interrupt"
        logging.getLogger("qeltrix_v6.server").info("stopped (%s)", what)
        _status(quiet, "stopped")


@app.command("sign-url", rich_help_panel="Servers")
def sign_url(
    path: Annotated[str, typer.Argument(metavar="PATH", help="URL path to sign, e.g. /movies/a.mp4.")],
    url_key: Annotated[
        str,
        typer.Option(
            "--url-key", metavar="FILE", help="The key file 'qeltrix serve --url-key' uses.", rich_help_panel=PANEL_KEY
        ),
    ],
    expires: Annotated[
        str, typer.Option("--expires", metavar="DURATION", help="Lifetime: 30s, 10m, 2h, 7d (at most 3650d).")
    ] = "10m",
    base: Annotated[
        str | None,
        typer.Option("--base", metavar="URL", help="Print a full URL on this base, e.g. https://media.example:8080."),
    ] = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Print PATH with a signature that 'qeltrix serve --url-key FILE' accepts until it expires.

    The signature covers exactly this path (percent-decoded: /a%2Eb and /a.b are one path)
    and the expiry time, nothing else: whoever holds the URL can GET or HEAD that one path,
    any range of it, until then. Make the key once with 'qeltrix keygen -o url.key'.

    [bold]Examples[/bold]

      qeltrix keygen -o url.key
      qeltrix serve --key-file my.key --url-key url.key --token-file token.txt ~/vault
      qeltrix sign-url --url-key url.key --expires 2h --base https://media.example:8080 /movies/a.mp4
    """
    seconds = parse_duration(expires)
    if base is not None and not re.fullmatch(r"https?://[^/?#\s]+/?", base):
        raise CliError(f"--base: {base!r} is not a base URL", hint="use e.g. https://host:8080", code=ExitCode.USAGE)
    key = _read_url_key(url_key)
    try:
        url = _signed_url.sign_url(path, key=key, expires=seconds, base=base)
    except ValueError as e:  # a path that is not valid UTF-8 once decoded
        raise CliError(f"{path!r} is not a URL path: {e}", code=ExitCode.USAGE) from None
    typer.echo(url)


@app.command(rich_help_panel="Servers")
def gateway(
    mode: Annotated[str, typer.Option("--mode", metavar="MODE", help=f"One of: {', '.join(MODES)}.")],
    listen: Annotated[str, typer.Option("--listen", metavar="HOST:PORT", help="Address to accept connections on.")],
    target: Annotated[
        str | None, typer.Option("--target", metavar="HOST:PORT", help="Where router and decrypt modes connect.")
    ] = None,
    key_file: Annotated[
        list[str] | None,
        typer.Option(
            "--key-file",
            "-k",
            metavar="FILE",
            help="The shared 32-byte key file. Given twice (new, then old), the old key is still "
            "accepted from peers during a rotation.",
            rich_help_panel=PANEL_KEY,
        ),
    ] = None,
    identity: Annotated[
        str | None,
        typer.Option(
            "--identity",
            metavar="FILE",
            help="This gateway's X25519 identity (qeltrix keygen --x25519): pinned-key mode.",
            rich_help_panel=PANEL_KEY,
        ),
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option(
            "--peer",
            metavar="PUBKEY",
            help="A peer gateway's public key to accept (repeatable).",
            rich_help_panel=PANEL_KEY,
        ),
    ] = None,
    peers_file: Annotated[
        str | None,
        typer.Option(
            "--peers-file", metavar="FILE", help="Public keys to accept, one per line.", rich_help_panel=PANEL_KEY
        ),
    ] = None,
    sink_dir: Annotated[
        str | None,
        typer.Option(
            "--sink-dir",
            metavar="DIR",
            help="Where sink mode stores one container per connection: a directory or s3://BUCKET/PREFIX.",
        ),
    ] = None,
    sink_raw: Annotated[
        bool,
        typer.Option("--sink-raw", help="Sink input is plaintext to encrypt here (default: V6 streams from a router)."),
    ] = False,
    block_size: Annotated[
        str, typer.Option("--block-size", metavar="SIZE", help="Largest frame, e.g. 256KiB.", rich_help_panel=PANEL_ADV)
    ] = "256KiB",
    flush_delay_ms: Annotated[
        float,
        typer.Option(
            "--flush-delay-ms",
            min=0,
            help="How long a partial block waits for more input (0: send as soon as the sender pauses).",
            rich_help_panel=PANEL_ADV,
        ),
    ] = 0.0,
    max_connections: Annotated[int, typer.Option("--max-connections", min=1, rich_help_panel=PANEL_ADV)] = 1024,
    idle_timeout: Annotated[
        float,
        typer.Option(
            "--idle-timeout",
            min=0.01,
            help="Seconds without traffic before a connection is closed.",
            rich_help_panel=PANEL_ADV,
        ),
    ] = 300.0,
    handshake_timeout: Annotated[
        float,
        typer.Option(
            "--handshake-timeout",
            min=0.01,
            metavar="SECONDS",
            help="Seconds a peer has, from connecting, to authenticate its session and first stream header.",
            rich_help_panel=PANEL_ADV,
        ),
    ] = 10.0,
    stats_interval: Annotated[
        float,
        typer.Option(
            "--stats-interval", min=0, help="Seconds between stats log lines (0: off).", rich_help_panel=PANEL_ADV
        ),
    ] = 60.0,
    sign_with: SignWithOpt = None,
    cipher: Annotated[
        str,
        typer.Option("--cipher", metavar="CIPHER", help="aes-256-gcm or chacha20-poly1305.", rich_help_panel=PANEL_ADV),
    ] = "aes-256-gcm",
    connect_timeout: Annotated[
        float,
        typer.Option(
            "--connect-timeout",
            min=0.01,
            metavar="SECONDS",
            help="Seconds to wait for the target to accept a connection.",
            rich_help_panel=PANEL_ADV,
        ),
    ] = 10.0,
    metrics: MetricsOpt = None,
    drain_timeout: Annotated[
        float,
        typer.Option(
            "--drain-timeout",
            min=0,
            metavar="SECONDS",
            help="On SIGTERM or Ctrl-C, stop accepting and let open connections finish this long.",
            rich_help_panel=PANEL_ADV,
        ),
    ] = 30.0,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Encrypt live TCP streams: an encryption boundary between two network zones.

    [bold]Examples[/bold] (one shared key file on both sides)

      qeltrix gateway --mode router  --listen 127.0.0.1:6380 --target gw.example:7000 --key-file shared.key
      qeltrix gateway --mode decrypt --listen 0.0.0.0:7000   --target 127.0.0.1:6379  --key-file shared.key
      qeltrix gateway --mode sink    --listen 0.0.0.0:7001   --sink-dir /srv/streams  --key-file shared.key

    Pinned-key mode (no shared secret; each side pins the other's public key):

      qeltrix gateway --mode router --listen 127.0.0.1:6380 --target gw2:7000 --identity a.id --peer qltx-x25519:...

    A sink with --sign-with KEY_FILE signs every container it stores (cut streams too), so
    readers can require it with --signer.

    SIGTERM and Ctrl-C drain (stop accepting, let open connections finish up to
    --drain-timeout, exit 0); SIGHUP re-reads the key, identity and peers files for new
    connections without dropping open ones. One log line per connection at its end.
    """
    if mode not in MODES:
        raise CliError(f"unknown mode {mode!r}", hint=f"use one of: {', '.join(MODES)}", code=ExitCode.USAGE)
    if sign_with is not None and mode != "sink":
        raise CliError(
            f"--sign-with is for --mode sink (a sink signs what it stores), not --mode {mode}",
            hint="streams between gateways are never signed; drop --sign-with",
            code=ExitCode.USAGE,
        )
    signer = read_signing_key(sign_with)
    key_files = list(key_file or [])
    if len(key_files) > 2:
        raise CliError("--key-file is given at most twice (the new key, then the old one)", code=ExitCode.USAGE)
    if not key_files and identity is None:
        raise CliError(
            "a gateway needs the shared key or an identity",
            hint="use --key-file FILE, or --identity FILE with --peer PUBKEY (see 'qeltrix keygen')",
            code=ExitCode.USAGE,
        )
    try:
        metrics_addr = split_hostport(metrics) if metrics is not None else None
    except ValueError as e:
        raise CliError(f"--metrics: {e}", code=ExitCode.USAGE) from None

    def load_keys() -> tuple[bytes | None, tuple[bytes, ...], bytes | None, list[bytes]]:
        for path in [*key_files, *([identity] if identity else [])]:
            _warn_if_readable_by_others(path)
        keys = [read_key_file(kf) for kf in key_files]
        ident = read_key_file(identity) if identity else None
        peers = list(peer or [])
        if peers_file:
            try:
                with open(peers_file, encoding="utf-8") as f:
                    peers += [line.strip() for line in f if line.strip() and not line.startswith("#")]
            except OSError as e:
                raise CliError(f"{peers_file}: {e.strerror}", code=ExitCode.IO) from None
        try:
            pinned = [decode_public_key(p) for p in peers]
        except ValueError as e:
            raise CliError(str(e), code=ExitCode.USAGE) from None
        return (keys[0] if keys else None), tuple(keys[1:]), ident, pinned

    _logging(quiet)
    key, accept_keys, ident, pinned = load_keys()
    glog = logging.getLogger("qeltrix_v6.gateway")
    gw: GatewayServer | None = None
    try:
        gw = GatewayServer(
            mode,
            listen,
            target=target,
            key=key,
            identity=ident,
            peers=pinned,
            sink_dir=sink_dir,
            sink_raw=sink_raw,
            cipher=cipher,
            block_size=parse_size(block_size),
            flush_delay=flush_delay_ms / 1000,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            connect_timeout=connect_timeout,
            stats_interval=stats_interval,
            handshake_timeout=handshake_timeout,
            sign_with=signer,
            accept_keys=accept_keys,
            metrics=metrics_addr,
        )
        gw.start()
    except ValueError as e:
        raise CliError(str(e), code=ExitCode.USAGE) from None
    except QeltrixError:
        raise  # an s3:// sink's bucket or credentials: said as every command says it
    except OSError as e:
        raise CliError(f"cannot listen on {listen}: {e}", code=ExitCode.IO) from None
    except (KeyboardInterrupt, _Terminated):
        if gw is not None:
            gw.stop()
        _status(quiet, "stopped")
        return
    hup = threading.Event()
    previous = signal.signal(signal.SIGHUP, lambda _s, _f: hup.set())
    try:
        host, port = gw.address
        print(f"{mode} gateway listening on {host}:{port}", file=sys.stderr, flush=True)
        if gw.metrics_address is not None:
            mh, mp = gw.metrics_address
            print(f"metrics on http://{mh}:{mp}/metrics", file=sys.stderr, flush=True)
        while True:
            if hup.wait(0.2):
                hup.clear()
                try:
                    key, accept_keys, ident, pinned = load_keys()
                    gw.reload(key=key, accept_keys=accept_keys, peers=pinned if ident is not None else None)
                    glog.info("SIGHUP: reloaded %d key file(s) and %d pinned peer(s)", len(key_files), len(pinned))
                except (CliError, ValueError) as e:
                    glog.error("SIGHUP: reload failed, keeping the previous keys: %s", e)
    except (KeyboardInterrupt, _Terminated) as e:
        # SIGTERM (systemd, docker stop) and Ctrl-C drain, then exit 0.
        what = f"signal {e.signum}" if isinstance(e, _Terminated) else "interrupt"
        glog.info("%s: draining (up to %.0f s)", what, drain_timeout)
        left = gw.drain(drain_timeout)
        if left:
            glog.warning("drain timeout: %d connection(s) still open were cut", left)
        _status(quiet, "stopped")
    finally:
        signal.signal(signal.SIGHUP, previous)


def _warn_if_readable_by_others(path: str) -> None:
    """A key or identity file that group or others can read is a leaked key waiting to happen."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # reading it says what is wrong
    if mode & 0o077:
        logging.getLogger("qeltrix_v6.gateway").warning(
            "%s is readable by others (mode %04o): chmod 600 %s", path, mode & 0o777, path
        )


@app.command(rich_help_panel="Inspect")
def recover(
    src: Annotated[
        str, typer.Argument(metavar="SRC", help="A stored stream without an index (e.g. a sink's .part file).")
    ],
    dst: Annotated[str, typer.Argument(metavar="DST", help="Container to write.")],
    key_file: KeyFileOpt = None,
    passphrase_file: PassphraseFileOpt = None,
    force: ForceOpt = False,
    identity: IdentityOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    passphrase: PassphraseTrap = None,
) -> None:
    """Rebuild the index of a stream whose writer died before finishing it.

    Keeps every frame that authenticates, in order, up to the first that does not; the result
    is marked incomplete unless the stream had ended cleanly.

    [bold]Example[/bold]

      qeltrix recover --key-file shared.key .stream-1700000000000-7.qltx.part stream-7.qltx
    """
    _refuse_passphrase_value(passphrase)
    _check_input(src)
    _check_output(dst, force)
    if _store.is_url(src):
        from .. import _s3recover

        # A sink killed mid-stream left its parts in an unfinished upload: make them the object.
        _s3recover.open_for_recovery(src)
    creds = credentials_for_reading(src, key_file, passphrase_file, identity_files=identity)
    info = _container.recover(src, dst, **creds.kwargs(), overwrite=force)
    summary = (
        f"recovered {info['blocks']} blocks ({info['pt_len']:,} bytes of plaintext) into {dst}: "
        f"kept {info['kept_len']:,} bytes of {src}, dropped {info['dropped_len']:,}"
    )
    if info["complete"]:
        _status(quiet, f"{summary}; complete")
    else:
        # Always said, even with --quiet: the data after the cut is gone, and readers of DST
        # will refuse its end unless they pass --allow-incomplete.
        typer.echo(f"qeltrix: warning: {summary}; INCOMPLETE ({info['stopped'] or 'no FINAL frame'})", err=True)
