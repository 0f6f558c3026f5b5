"""Downloading an `s3_payload` event's data: the one URL the app fetches that a webhook names.

The URL is a pre-signed link to Terra's storage, but it arrives in a webhook, so it is treated as
an address to check before anything is fetched:

- **Where.** `https` only, to a host whose every address is public: loopback, private, link-local
  (169.254.169.254, a cloud's metadata service), shared, reserved and multicast addresses are
  refused. The connection then goes to the very address that was checked (TLS still verifies the
  certificate for the host's name), so a name that resolves again to another address (DNS
  rebinding) is never followed. `allow_loopback` (development and tests, where the sandbox serves
  payloads on loopback) also admits plain `http` and loopback addresses, nothing more.
- **Who.** No credentials: a URL with `user:pass@` is refused (it would become Basic auth), and
  our Terra API key is never sent: the URL is the capability. Redirects are not followed.
- **How long.** `deadline` bounds the whole download, connecting and a server that trickles its
  answer included: when it passes, the socket is shut, whatever it was doing.
- **How much.** At most `max_bytes` (Terra caps a payload at 10 MB).

`PayloadRefused` (the URL may not be fetched, or its answer is not a payload) is final;
`PayloadUnavailable` (deadline, connection, 5xx) may pass, so the inbox tries again later.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from urllib.parse import urlsplit

from requests.certs import where as ca_bundle  # certifi's, as for every other Terra call

from terra_integration.client import TerraRejected, TerraUnavailable

CHUNK_BYTES = 64 * 1024


class PayloadRefused(TerraRejected):
    """The s3_payload URL may not be fetched, or what it answered is not a payload: trying again
    cannot help."""

    code = "payload_refused"


class PayloadUnavailable(TerraUnavailable):
    """The download failed in a way that may pass (the deadline, the connection, a 5xx)."""

    code = "payload_unavailable"


def download_payload(url: str, *, deadline: float, max_bytes: int, allow_loopback: bool = False) -> bytes:
    """The body at an s3_payload's URL, within `deadline` seconds in all and `max_bytes`; see the
    module's docstring for what is refused."""
    ends_at = time.monotonic() + deadline
    parts = urlsplit(url)
    allowed_schemes = ("https", "http") if allow_loopback else ("https",)
    if parts.scheme not in allowed_schemes:
        raise PayloadRefused(f"the s3_payload url must be {' or '.join(allowed_schemes)}, not {parts.scheme or 'none'}")
    if parts.username is not None or parts.password is not None:
        raise PayloadRefused("the s3_payload url carries credentials")
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise PayloadRefused("the s3_payload url has an invalid port") from None
    if not host:
        raise PayloadRefused("the s3_payload url names no host")
    address = _checked_address(host, port, allow_loopback)
    tls = ssl.create_default_context(cafile=ca_bundle()) if parts.scheme == "https" else None
    connection = _PinnedConnection(host, address, port, timeout=max(ends_at - time.monotonic(), 0.001), tls=tls)
    watchdog = threading.Timer(max(ends_at - time.monotonic(), 0), connection.cut)
    watchdog.start()
    too_late = PayloadUnavailable(f"the s3_payload download did not finish within {deadline:g} s")
    try:
        body = _fetch(connection, parts, max_bytes)
    except (OSError, http.client.HTTPException) as error:
        if connection.expired or isinstance(error, TimeoutError):  # one wait as long as the whole deadline
            raise too_late from None
        raise PayloadUnavailable(f"the s3_payload could not be downloaded ({type(error).__name__})") from None
    finally:
        watchdog.cancel()
        connection.close()
    if connection.expired:  # cut short: a body without a length ends where the cut came
        raise too_late
    return body


def _fetch(connection: _PinnedConnection, parts, max_bytes: int) -> bytes:
    target = parts.path or "/"
    connection.request("GET", f"{target}?{parts.query}" if parts.query else target, headers={"Accept": "*/*"})
    response = connection.getresponse()
    if response.status >= 500:
        raise PayloadUnavailable(f"downloading the s3_payload answered {response.status}", status=response.status)
    if response.status != 200:
        raise PayloadRefused(f"downloading the s3_payload answered {response.status}", status=response.status)
    if response.length is not None and response.length > max_bytes:
        raise PayloadRefused(f"the s3_payload is larger than {max_bytes} bytes")
    body = bytearray()
    while chunk := response.read1(CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            raise PayloadRefused(f"the s3_payload is larger than {max_bytes} bytes")
    if response.length:  # the server closed before sending all it announced (or the deadline cut it)
        raise http.client.IncompleteRead(bytes(body), response.length)
    return bytes(body)


def _checked_address(host: str, port: int, allow_loopback: bool) -> str:
    """An address of `host` to connect to, once every address it resolves to is one we may fetch
    from; PayloadRefused names the first that is not."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise PayloadUnavailable(f"the s3_payload host {host!r} could not be resolved") from None
    addresses = list(dict.fromkeys(info[4][0] for info in found))
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not (ip.is_loopback and allow_loopback) and (not ip.is_global or ip.is_multicast):
            raise PayloadRefused(f"the s3_payload host {host!r} is at a non-public address ({ip})")
    return addresses[0]


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP, or HTTPS when `tls` is given, to `host` over a socket to `address` (the one checked):
    the Host header, TLS's server name and its certificate check all use `host`."""

    def __init__(self, host: str, address: str, port: int, timeout: float, tls: ssl.SSLContext | None):
        super().__init__(host, port, timeout=timeout)
        self.address, self.tls = address, tls
        self.default_port = 443 if tls else 80  # the Host header names no port when it is the scheme's
        self.expired = False
        # Kept here too: http.client lets go of `sock` once the answer's headers are read when the
        # server will close after it, while the body is still being read from it.
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        with self._lock:
            self.sock = self._socket = self.tls.wrap_socket(sock, server_hostname=self.host) if self.tls else sock
        if self.expired:  # the deadline passed while connecting
            self.cut()

    def cut(self) -> None:
        """The deadline passed: shut the socket, which ends a read that is waiting on it."""
        self.expired = True
        with self._lock:
            if self._socket is not None:
                try:
                    # The plain socket's shutdown, under TLS too: it only stops the file descriptor.
                    socket.socket.shutdown(self._socket, socket.SHUT_RDWR)
                except OSError:
                    pass
