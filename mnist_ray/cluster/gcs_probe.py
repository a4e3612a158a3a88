"""Is a Ray GCS at host:port? Asked in seconds, before ``ray.init``, which would wait minutes on anything else.

``ray.init`` on a live port that is not a GCS (the dashboard's 8265 without ``http://``, an HTTP server, SSH, a
port that accepts and says nothing) retries for minutes. The probe:

1. listens briefly: a server that speaks first (SSH's ``SSH-2.0-...`` banner) is not Ray;
2. sends the HTTP/2 client preface: a gRPC server answers with a SETTINGS frame, an HTTP/1 server with
   ``HTTP/1.1 400``, a silent port with nothing;
3. asks the gRPC server for its cluster id (``NodeInfoGcsService/GetClusterId``), without a token: a GCS
   answers, or refuses for lack of a token (still Ray: the token error the jobs explain); any other gRPC
   server answers UNIMPLEMENTED.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + an empty SETTINGS frame
SETTINGS = 0x04


@dataclass(frozen=True)
class Answer:
    """What answered at an address: ``kind`` is ray, ray-needs-token, http, ssh, silent, closed, grpc or other."""

    kind: str
    detail: str = ""


def probe(host: str, port: int, timeout: float = 3.0) -> Answer:
    """What listens at ``host:port`` (which must accept TCP connections)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(0.3)
            first = _recv(s)
            if first and _is_settings(first):  # an HTTP/2 server may send its SETTINGS frame first
                return _grpc(host, port, timeout)
            if first:  # the server spoke first
                return Answer("ssh" if first.startswith(b"SSH-") else "other", _printable(first))
            s.settimeout(timeout)
            s.sendall(PREFACE)
            reply = _recv(s)
    except OSError as exc:
        return Answer("closed", str(exc))
    if reply is None:
        return Answer("silent")
    if not reply:
        return Answer("closed")
    if reply.lstrip().startswith((b"HTTP/", b"<")):  # a status line, or an HTTP/0.9-style error page
        return Answer("http", _printable(reply.lstrip().split(b"\n", 1)[0]))
    if _is_settings(reply):
        return _grpc(host, port, timeout)
    return Answer("other", _printable(reply))


def _is_settings(data: bytes) -> bool:
    """An HTTP/2 frame header of type SETTINGS on stream 0: how an HTTP/2 (gRPC) server starts."""
    return len(data) >= 9 and data[3] == SETTINGS and data[5:9] == b"\x00\x00\x00\x00"


def _recv(s: socket.socket) -> bytes | None:
    """Bytes the peer sent (b"" if it closed the connection), or None if it said nothing before the timeout."""
    try:
        return s.recv(256)
    except TimeoutError:
        return None
    except OSError:
        return b""


def _printable(data: bytes) -> str:
    return data[:60].decode("ascii", "replace").strip()


def _grpc(host: str, port: int, timeout: float) -> Answer:
    """Ask a gRPC server for a Ray cluster id, without a token."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                return Answer("ray-needs-token")
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return Answer("grpc", "no Ray GCS service")
            return Answer("ray", f"gRPC {code.name}")  # a GCS under load, say: let ray.init decide
    return Answer("ray")
