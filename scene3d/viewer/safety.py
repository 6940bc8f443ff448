"""What keeps the viewer safe to leave running: which websockets it accepts, how big an upload may
grow, where it writes files, and how it reads numbers that come from a browser.

A page on any web site can open a websocket to ``127.0.0.1``; browsers send that page's Origin
with the handshake, so the viewer accepts a websocket only when its Origin is the page's own (the
same host and port as the Host header). A handshake without an Origin does not come from a
browser (browsers always send one for websockets); such a client is let in, because reaching the
port at all is what ``--host`` decides, and it can do no more than the page can. On a loopback
host the Host header must also name the loopback, so a foreign name rebound to 127.0.0.1 (DNS
rebinding) is refused too.

viser 1.1.1 offers no hook into its websocket handshake, so the check runs in the first connect
callback of viser's websocket server, where the connection's request is known and before any of
viser's messages are sent or the client's are read; a refused connection is closed with code 1008
(policy violation), as viser itself closes one of the wrong version.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008  # websocket close code
LOOPBACK_NAMES = ("localhost", "localhost.")
MAX_OUTPUT_FILES = 999  # per kind of file in the output folder
MAX_UPLOADS_IN_FLIGHT = 8  # unfinished uploads buffered at once, all browsers together


def is_loopback(host: str) -> bool:
    """True for a name or address that only this machine can reach."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    """(host, port) of ``netloc`` with the scheme's default port filled in, or None when malformed."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.username is not None or parts.path:
        return None
    default = 443 if scheme in ("https", "wss") else 80
    return parts.hostname.lower(), port or default


def origin_allowed(origin: str | None, host_header: str | None, loopback_only: bool) -> bool:
    """Whether a websocket handshake with these Origin and Host headers is the page's own.

    No Origin: a non-browser client, allowed (see the module docstring). Otherwise the Origin must
    be an http(s) origin with the Host's host and port, and with ``loopback_only`` (the viewer
    listens on a loopback address) that host must be a loopback one."""
    if origin is None:
        return True
    if not host_header:
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query or parts.fragment:
        return False
    page = _host_port(parts.netloc, parts.scheme)
    served = _host_port(host_header, parts.scheme)
    if page is None or served is None or page != served:
        return False
    return is_loopback(served[0]) or not loopback_only


def install_origin_check(viser_server, bound_host: str) -> None:
    """Closes every websocket of ``viser_server`` whose Origin is not the page's own (see
    :func:`origin_allowed`); ``bound_host`` is the address the viewer listens on."""
    websock = viser_server._websock_server
    loopback_only = is_loopback(bound_host)

    async def check(conn) -> None:
        connection = websock._live_connections.get(conn.client_id)
        if connection is None:
            return
        try:
            headers = connection.request.headers
            origin, host = headers.get("Origin"), headers.get("Host")
            allowed = origin_allowed(origin, host, loopback_only)
        except Exception:  # repeated or malformed headers: not a page we served
            origin, host, allowed = "(malformed)", "(malformed)", False
        if allowed:
            return
        log.warning("refused a websocket from origin %r (the page is served as %r)", origin, host)
        await connection.close(POLICY_VIOLATION, "foreign origin")

    websock.on_client_connect(check)


def install_upload_cap(viser_server, max_bytes: int) -> None:
    """Stops buffering any upload that declares more than ``max_bytes`` or sends more than it
    declared, so a browser cannot fill the server's memory through viser's upload buttons.

    viser buffers each upload whole before its callbacks run; these handlers run right after
    viser's own for the same message and drop the transfer's buffer, after which viser ignores its
    remaining parts. The upload callbacks check the size again."""
    from viser import _messages

    websock = viser_server._websock_server
    transfers = viser_server.gui._current_file_upload_states
    max_parts = max(1, max_bytes // 1024)

    def acceptable(size, parts) -> bool:
        whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (size, parts))  # the page could send anything
        return whole and 0 <= size <= max_bytes and 0 <= parts <= max_parts and len(transfers) <= MAX_UPLOADS_IN_FLIGHT

    def start(client_id, message) -> None:
        if not acceptable(message.size_bytes, message.part_count) and transfers.pop(message.transfer_uuid, None) is not None:
            log.warning("refused an upload of %r bytes (ceiling %s, %d in flight)", message.size_bytes, max_bytes, len(transfers))

    def part(client_id, message) -> None:
        state = transfers.get(message.transfer_uuid)
        if state is not None and state["transferred_bytes"] > min(state["total_bytes"], max_bytes):
            transfers.pop(message.transfer_uuid, None)
            log.warning("dropped an upload that sent more than it declared")

    websock.register_handler(_messages.FileTransferStartUpload, start)
    websock.register_handler(_messages.FileTransferPart, part)


def new_output_file(folder: Path, stem: str, suffix: str) -> Path:
    """Reserves ``folder/stem-NNN<suffix>`` with the number after the highest there (at most
    :data:`MAX_OUTPUT_FILES`) and returns it: the file is created empty here, exclusively, so two
    exports never share a name and nothing existing is replaced; its writer puts the content in place."""
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(stem) + r"-(\d+)" + re.escape(suffix) + "$")
    taken = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
    n = max(taken, default=0) + 1
    while True:
        if n > MAX_OUTPUT_FILES:  # a page clicking forever does not fill the disk
            raise ValueError(f"{folder.name} already holds {stem}-{MAX_OUTPUT_FILES:03d}{suffix}; move some files away first")
        path = folder / f"{stem}-{n:03d}{suffix}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path
        except FileExistsError:
            n += 1


def bounded(value, lo: float, hi: float, fallback: float, integer: bool = False) -> float:
    """A number from the browser, clamped to [lo, hi]; ``fallback`` when it is not a finite number."""
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return fallback
    if not math.isfinite(value):
        return fallback
    value = min(max(value, lo), hi)
    return float(int(round(value))) if integer else value


NETWORK_NOTICE = """\
The viewer listens on {host}: anyone who can reach this machine on port {port} can
  - see the scene, its training cameras and (with train --viewer) the training progress,
  - move their own camera and change the render settings, pause and resume live training,
  - write crop exports, camera paths and videos into {output} under names the viewer makes
    (exports/crop-NNN.*, camera_paths/path-NNN.json, renders/path-NNN.mp4), and download them.
They cannot name a path on this machine, read or overwrite other files, or run code. Keep the
viewer on 127.0.0.1 (the default) unless everyone on that network may do the above."""
