#!/usr/bin/env python3
"""A strict TLS 1.3 test server on tlslite-ng, for the e2e tests (tests/tests/interop_tlslite.rs).

tlslite-ng checks the client closely: message order, extension rules, and after a
HelloRetryRequest that the second ClientHello is the first one with only the changes RFC 8446
§4.1.2 allows ("Old Client Hello does not match the updated Client Hello").

Listens on 127.0.0.1 (a free port), prints "READY <port>", then serves --naccept connections
one after the other: the handshake, one HTTP/1.0 request, a text/plain answer listing what the
server saw (one "key=value" per line, also printed on stdout, prefixed with "conn <n>: " and
followed by "conn <n>: END"). A failed connection prints "conn <n>: ERROR <what>" and the
server goes on with the next.
"""

import argparse
import socket
import sys
import time

from tlslite import HandshakeSettings, TLSConnection, X509CertChain, parsePEMKey
from tlslite.constants import GroupName
from tlslite.handshakehelpers import HandshakeHelpers
from tlslite.messages import ServerHello

TLS_1_3_HRR = bytes.fromhex(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

# What tlslite-ng does not report after the handshake, recorded per connection: whether it
# sent a HelloRetryRequest, and which PSK binder it verified (so: which PSK it selected).
SEEN = {}

_server_hello_create = ServerHello.create


def _recording_create(self, version, random, *args, **kwargs):
    if bytes(random) == TLS_1_3_HRR:
        SEEN["hrr"] = True
    return _server_hello_create(self, version, random, *args, **kwargs)


ServerHello.create = _recording_create

_verify_binder = HandshakeHelpers.verify_binder


def _recording_verify_binder(client_hello, hashes, position, secret, prf, external=True):
    _verify_binder(client_hello, hashes, position, secret, prf, external)
    SEEN["psk"] = "external" if external else "resumption"


HandshakeHelpers.verify_binder = staticmethod(_recording_verify_binder)


def log(msg):
    print(msg, flush=True)


def read_request(conn, deadline):
    data = b""
    while b"\r\n\r\n" not in data:
        if time.monotonic() > deadline:
            raise TimeoutError("no complete HTTP request")
        chunk = conn.read(max=4096)
        if not chunk:
            raise EOFError("connection closed before the request ended")
        data += bytes(chunk)
    return data


def post_handshake_auth(conn, deadline):
    """Sends a CertificateRequest and reads until the client's Certificate, CertificateVerify
    and Finished are processed (tlslite checks them when it reads the next record)."""
    for _ in conn.request_post_handshake_auth():
        pass
    while conn.session.clientCertChain is None:
        if time.monotonic() > deadline:
            raise TimeoutError("no post-handshake Certificate")
        conn.read(max=1, min=0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--naccept", type=int, default=1)
    p.add_argument("--groups", default="x25519,secp256r1,secp384r1",
                   help="groups the server accepts, in preference order: a client share "
                        "for none of them gets a HelloRetryRequest for the first one offered")
    p.add_argument("--tickets", type=int, default=2)
    p.add_argument("--psk-identity")
    p.add_argument("--psk-hex")
    p.add_argument("--psk-hash", default="sha256")
    p.add_argument("--client-auth", action="store_true",
                   help="CertificateRequest in the handshake")
    p.add_argument("--pha", action="store_true",
                   help="post-handshake CertificateRequest after the request")
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()

    with open(a.cert) as f:
        chain = X509CertChain()
        chain.parsePemList(f.read())
    with open(a.key) as f:
        key = parsePEMKey(f.read(), private=True)

    settings = HandshakeSettings()
    settings.minVersion = (3, 4)
    settings.maxVersion = (3, 4)
    groups = a.groups.split(",")
    settings.eccCurves = groups
    settings.keyShares = groups
    settings.ticket_count = a.tickets
    # Fixed for the process: the tickets of one connection resume the next.
    settings.ticketKeys = [bytearray(range(32))]
    if a.psk_identity:
        settings.pskConfigs = [(bytearray(a.psk_identity, "utf-8"),
                                bytearray.fromhex(a.psk_hex), a.psk_hash)]

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    log("READY %d" % srv.getsockname()[1])

    for n in range(a.naccept):
        sock, _ = srv.accept()
        sock.settimeout(a.timeout)
        deadline = time.monotonic() + a.timeout
        conn = TLSConnection(sock)
        SEEN.clear()
        try:
            conn.handshakeServer(certChain=chain, privateKey=key, settings=settings,
                                 reqCert=a.client_auth)
            facts = {
                "version": conn.getVersionName(),
                "cipher": conn.getCipherName(),
                "group": (GroupName.toRepr(conn.ecdhCurve)
                          if conn.ecdhCurve is not None else "none"),
                "hrr": "yes" if SEEN.get("hrr") else "no",
                "psk": SEEN.get("psk", "none"),
                "client_cert": (bytes(conn.session.clientCertChain.x509List[0].bytes).hex()
                                if conn.session.clientCertChain else "none"),
            }
            request = read_request(conn, deadline)
            facts["request"] = request.split(b"\r\n")[0].decode("latin-1")
            if a.pha:
                post_handshake_auth(conn, deadline)
                facts["pha_cert"] = bytes(
                    conn.session.clientCertChain.x509List[0].bytes).hex()
            body = "".join("%s=%s\n" % kv for kv in facts.items())
            conn.write(("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                        "Content-Length: %d\r\n\r\n%s" % (len(body), body)).encode())
            conn.close()
            for line in body.splitlines():
                log("conn %d: %s" % (n, line))
            log("conn %d: END" % n)
        except Exception as e:  # pylint: disable=broad-except
            log("conn %d: ERROR %s: %s" % (n, type(e).__name__, e))
            try:
                sock.close()
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
