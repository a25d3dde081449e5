#!/usr/bin/env python3
"""A real SMTP server for redline's notification tests (aiosmtpd over TCP).

Binds 127.0.0.1 on the given port (0: any free port) and prints `PORT <n>` on stdout once it
accepts connections. Every accepted message is written to DIR as `msg-<seq>.eml` (the raw
bytes) and `msg-<seq>.json` (envelope, AUTH login and mechanism, whether TLS was on); each
DATA outcome is appended to DIR/attempts.log (`accepted`, `451`, `550`, ...).

The test steers it through DIR/control, read at every DATA: `CODE COUNT` answers CODE for the
next COUNT messages (COUNT -1: until the file changes), e.g. `451 2` or `550 -1`.

Options: --auth USER:PASSWORD (AUTH PLAIN/LOGIN required; --exclude-auth PLAIN leaves LOGIN), --tls starttls|implicit (a
self-signed certificate for 127.0.0.1/localhost is generated with openssl into DIR/cert.pem).
"""

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

REPLIES = {
    "421": "421 4.3.2 Service shutting down, try later",
    "450": "450 4.2.1 Mailbox busy, try later",
    "451": "451 4.3.0 Local error in processing, try again later",
    "452": "452 4.3.1 Insufficient storage, try later",
    "550": "550 5.7.1 Delivery not authorized, message refused",
    "552": "552 5.3.4 Message too big",
    "554": "554 5.0.0 Transaction failed",
}


class Handler:
    def __init__(self, directory):
        self.directory = directory
        # Continue the numbering of an earlier run in the same directory (a restarted server).
        self.seq = len([n for n in os.listdir(directory) if n.startswith("msg-") and n.endswith(".eml")])
        self.control_text = None
        self.remaining = 0

    def _steer(self):
        """The reply forced by DIR/control for this message, or None to accept."""
        path = os.path.join(self.directory, "control")
        try:
            with open(path) as f:
                text = f.read().strip()
        except FileNotFoundError:
            text = ""
        if text != self.control_text:
            self.control_text = text
            parts = text.split()
            self.code = parts[0] if parts else None
            self.remaining = int(parts[1]) if len(parts) > 1 else -1
        if not self.code or self.remaining == 0:
            return None
        if self.remaining > 0:
            self.remaining -= 1
        return REPLIES.get(self.code, f"{self.code} forced by the test")

    def _log(self, outcome):
        with open(os.path.join(self.directory, "attempts.log"), "a") as f:
            f.write(outcome + "\n")

    async def handle_DATA(self, server, session, envelope):
        forced = self._steer()
        if forced is not None:
            self._log(forced.split()[0])
            return forced
        self.seq += 1
        name = f"msg-{self.seq:04d}"
        tls = session.ssl is not None or (
            server.transport is not None
            and server.transport.get_extra_info("ssl_object") is not None
        )
        login = None
        if isinstance(session.auth_data, LoginPassword):
            login = session.auth_data.login.decode("utf-8", "replace")
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "auth_login": login,
            "auth_mechanism": getattr(session, "redline_mechanism", None),
            "tls": tls,
        }
        for suffix, data in ((".json", json.dumps(meta).encode()), (".eml", envelope.original_content)):
            temp = os.path.join(self.directory, "." + name + suffix + ".tmp")
            with open(temp, "wb") as f:
                f.write(data)
            os.replace(temp, os.path.join(self.directory, name + suffix))
        self._log("accepted")
        return "250 2.0.0 Message accepted for delivery"


def make_authenticator(user, password):
    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        if ok:
            session.redline_mechanism = mechanism
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return authenticator


def make_tls_context(directory):
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-keyout", key, "-out", cert,
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "keyUsage=critical,digitalSignature,keyEncipherment",
            "-addext", "extendedKeyUsage=serverAuth",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--auth")
    parser.add_argument("--tls", choices=["starttls", "implicit"])
    parser.add_argument("--exclude-auth", action="append", default=[])
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)

    handler = Handler(args.dir)
    context = make_tls_context(args.dir) if args.tls else None
    options = {"hostname": "smtp.test", "auth_require_tls": False}
    if args.auth:
        user, _, password = args.auth.partition(":")
        options["authenticator"] = make_authenticator(user, password)
        options["auth_required"] = True
        options["auth_exclude_mechanism"] = args.exclude_auth
    if args.tls == "starttls":
        options["tls_context"] = context
        options["require_starttls"] = True

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, **options),
        host="127.0.0.1",
        port=args.port,
        ssl=context if args.tls == "implicit" else None,
        reuse_address=True,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
