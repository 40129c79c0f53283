"""Certificates for the TLS tests, made with the `openssl` command line tool.

`make_pki(directory)` writes a test CA, a server certificate for localhost/127.0.0.1, a
client certificate (CN worker-1) signed by the same CA, a client certificate from a
second, unrelated CA (CN intruder), and a key that matches no certificate. Keys are
P-256 (fast to make and to use); nothing is encrypted. `client_context()` builds the
Python ssl context a test client uses with them.
"""
import shutil
import ssl
import subprocess
from pathlib import Path

from conftest import missing

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def need_openssl():
    path = shutil.which("openssl")
    if path is None:
        missing("the openssl command line tool", debian="openssl")
    return path


def _run(directory, *args):
    subprocess.run([need_openssl(), *args], cwd=directory, check=True,
                   capture_output=True, timeout=60)


def _ca(d, name, cn):
    _run(d, "req", "-x509", *EC, "-keyout", f"{name}.key", "-out", f"{name}.pem",
         "-days", "30", "-subj", f"/CN={cn}")


def _signed(d, name, cn, ca, ext=None):
    _run(d, "req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
    extra = ["-extfile", ext] if ext else []
    _run(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
         "-CAcreateserial", "-out", f"{name}.pem", "-days", "30", *extra)


class PKI:
    def __init__(self, directory):
        d = Path(directory)
        self.dir = d
        self.ca = str(d / "ca.pem")
        self.server_cert, self.server_key = str(d / "server.pem"), str(d / "server.key")
        self.client_cert, self.client_key = str(d / "client.pem"), str(d / "client.key")
        self.intruder_cert = str(d / "intruder.pem")
        self.intruder_key = str(d / "intruder.key")
        self.other_ca = str(d / "otherca.pem")
        self.stray_key = str(d / "stray.key")

    def server_flags(self, verify="none"):
        flags = ["--ssl-certificate", self.server_cert, "--ssl-key", self.server_key,
                 "--ssl-ca-file", self.ca]
        return flags + (["--ssl-verify-clients", verify] if verify != "none" else [])


def make_pki(directory):
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _ca(d, "ca", "fastgear test CA")
    _ca(d, "otherca", "some other CA")
    _signed(d, "server", "localhost", "ca", "server.ext")
    _signed(d, "client", "worker-1", "ca")
    _signed(d, "intruder", "intruder", "otherca")
    _run(d, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-out", "stray.key")
    return PKI(d)


def client_context(pki, cert=None, key=None):
    """A client context trusting the test CA, with a client certificate if given."""
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx
