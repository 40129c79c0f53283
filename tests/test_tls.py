"""TLS (`--ssl`, `--ssl-port`, client certificates) against real peers.

Every test starts a real fastgear (or gearmand) process on a free loopback port with the
certificates of tests/tlscerts.py and talks to it with real TLS peers: the `openssl
s_client` command line tool, the python `gear` client and worker (PyPI `gear`, which
always presents a certificate, so "without a client certificate" there means a server
that asks for none), and raw Gearman packets over Python's `ssl` (tests/gearproto.py).
Covered: the protocol versions offered and refused, client certificate checks and the
CN identity (`workers`, `/status`), `--admin-allow cn:NAME`, bad first bytes on either
kind of port, a flood of handshakes that never finish, the handshake timeout, the
start-up errors of bad key files (no secret in them), gearmand's environment variables,
`--max-packet` over TLS, and the gearmand 1.1.20 quirk that `--ssl` still serves plain
text (README compatibility list). Everything waits on conditions with generous bounds;
nothing is timed.
"""
import http.client
import json
import os
import re
import resource
import select
import socket
import ssl
import subprocess
import sys
import threading

import pytest
from conftest import free_port, need_gearmand, need_module, wait_for
from gearproto import (
    CAN_DO,
    ECHO_REQ,
    ERROR,
    GRAB_JOB,
    HEADER,
    JOB_ASSIGN,
    REQ,
    WORK_COMPLETE,
    Closed,
    Conn,
    pack,
)
from tlscerts import client_context, need_openssl

TOO_LARGE = [b"ARGUMENT_TOO_LARGE", b"Packet larger than the server allows (--max-packet)"]
DENIED = b"ERR ACCESS_DENIED "
NO_CIPHER = ("(NONE)", None)
# gear sets deprecated ssl options and calls notifyAll(); not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gear")


# --- helpers ---------------------------------------------------------------------------

def tls_server(start_server, pki, *flags, verify="none", cert=None):
    """fastgear with --ssl on -p; Conn(srv) speaks TLS with `cert` (a (cert, key) pair)."""
    srv = start_server("fastgear", "--ssl", *pki.server_flags(verify), *flags)
    srv.ssl_context = client_context(pki, *(cert or ()))
    return srv


def tls_conn(pki, port, cert=None, key=None):
    """A raw TLS connection to 127.0.0.1:port (a client certificate if given)."""
    conn = Conn()
    conn.ssl_context = client_context(pki, cert, key)
    return conn.connect("127.0.0.1", port)


def plain_conn(port):
    return Conn().connect("127.0.0.1", port)


def s_client(pki, port, *args):
    """`openssl s_client` against port with stdin closed at once; (returncode, output)."""
    res = subprocess.run([need_openssl(), "s_client", "-connect", f"127.0.0.1:{port}",
                          "-CAfile", pki.ca, *args], input=b"", capture_output=True,
                         timeout=30, check=False)
    return res.returncode, (res.stdout + res.stderr).decode(errors="replace")


def negotiated(output):
    """(protocol, cipher) from s_client's "New, TLSv1.3, Cipher is X" line; (NONE) for
    both when no session was made."""
    found = re.search(r"^New, (\S+), Cipher is (\S+)", output, re.MULTILINE)
    return found.groups() if found else (None, None)


def run_one_job(client, worker, function=b"f", data=b"payload"):
    """A foreground job from client to worker and back."""
    worker.send(CAN_DO, function)
    worker.echo()
    handle = client.submit(function, data)
    worker.send(GRAB_JOB)
    assigned = worker.expect(JOB_ASSIGN)
    assert assigned[0] == handle and assigned[2] == data
    worker.send(WORK_COMPLETE, handle, data[::-1])
    assert client.expect(WORK_COMPLETE) == [handle, data[::-1]]


def refused_at_handshake(pki, port, cert=None, key=None):
    """Whether a TLS peer with that certificate (or none) is refused: the handshake
    fails or, under TLS 1.3 where the server's verdict comes after the client finished,
    the first read gets the alert or EOF instead of an answer."""
    try:
        conn = tls_conn(pki, port, cert, key)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    with conn:
        try:
            conn.send(ECHO_REQ, b"x")
            conn.recv()
        except (Closed, ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return True
    return False


def client_hello():
    """The bytes of a real TLS ClientHello, made by Python's ssl without a socket."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def garbled_hello():
    """A ClientHello record header followed by as many bytes of garbage as it announces."""
    hello = client_hello()
    return hello[:5] + b"\xff" * int.from_bytes(hello[3:5], "big")


def closed_by_server(sock, timeout=15):
    """True once the server closed sock (EOF or reset) within `timeout`."""
    def gone():
        ready, _, _ = select.select([sock], [], [], 0.2)
        if not ready:
            return False
        try:
            return sock.recv(65536) == b""   # an alert record may come first
        except OSError:
            return True
    try:
        wait_for(gone, timeout=timeout, interval=0, what="the server to close the socket")
        return True
    except AssertionError:
        return False


def still_open(sock):
    ready, _, _ = select.select([sock], [], [], 0)
    return not ready


def http_status(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/status")
        res = conn.getresponse()
        return res.status, json.loads(res.read())
    finally:
        conn.close()


def serve_exit(tmp_path, *flags, env=None):
    """Run `fastgear serve` that should fail to start; (returncode, stderr)."""
    res = subprocess.run([sys.executable, "-m", "fastgear", "serve", "-p", str(free_port()),
                          "-L", "127.0.0.1", "--log-file", "none", "--monitor", "off",
                          "-P", str(tmp_path / "pid"), *flags], capture_output=True,
                         timeout=30, cwd=str(tmp_path), check=False,
                         env=env)
    return res.returncode, res.stderr.decode(errors="replace")


# --- the handshake: versions and ciphers -------------------------------------------------

def test_openssl_s_client_negotiates_tls_1_2_and_1_3_with_a_cipher(start_server, tls_pki):
    srv = tls_server(start_server, tls_pki)
    for version, flag in (("TLSv1.3", "-tls1_3"), ("TLSv1.2", "-tls1_2")):
        _, out = s_client(tls_pki, srv.port, flag)
        assert negotiated(out)[0] == version, out
        cipher = negotiated(out)[1]
        assert cipher and cipher not in ("0000", "(NONE)"), out
        assert "Verify return code: 0 (ok)" in out, out


def test_tls_1_1_and_1_0_are_refused_with_a_protocol_version_alert(start_server, tls_pki):
    srv = tls_server(start_server, tls_pki)
    # SECLEVEL=0: the local openssl would otherwise refuse to offer the old versions
    # itself, and the test would prove nothing about the server.
    for flag in ("-tls1_1", "-tls1"):
        code, out = s_client(tls_pki, srv.port, flag, "-cipher", "DEFAULT@SECLEVEL=0")
        assert code != 0, out
        assert "alert protocol version" in out, out
        assert negotiated(out)[1] in NO_CIPHER, out
    with Conn(srv) as ok:                      # the listener is unharmed
        ok.echo(b"after the refusals")


# --- python gear over TLS, client certificates, the CN identity -------------------------

def gear_jobs(port, pki, count=5):
    """A gear worker and a gear client over TLS: `count` foreground jobs complete, and
    the payload comes back reversed. Both always present the client certificate."""
    gear = need_module("gear", pip="gear")
    files = {"ssl_key": pki.client_key, "ssl_cert": pki.client_cert, "ssl_ca": pki.ca}
    worker = gear.Worker("tls-worker")
    client = gear.Client("tls-client")
    stop = threading.Event()

    def work():
        while not stop.is_set():
            try:
                job = worker.getJob()
            except gear.InterruptedError:
                return
            job.sendWorkComplete(job.arguments[::-1])

    thread = threading.Thread(target=work, daemon=True)
    try:
        worker.addServer("127.0.0.1", port, **files)
        worker.waitForServer(timeout=15)
        worker.registerFunction("reverse")
        thread.start()
        client.addServer("127.0.0.1", port, **files)
        client.waitForServer(timeout=15)
        for i in range(count):
            job = gear.Job(b"reverse", b"payload-%d" % i)
            client.submitJob(job, timeout=15)
            wait_for(lambda j=job: j.complete, timeout=15, what="the gear job to complete")
            assert b"".join(job.data) == (b"payload-%d" % i)[::-1]
            assert not job.failure
    finally:
        stop.set()
        worker.stopWaitingForJobs()
        client.shutdown()
        worker.shutdown()
        thread.join(10)


def test_gear_client_and_worker_complete_jobs_when_no_client_certificate_is_asked(
        start_server, tls_pki):
    # --ssl-verify-clients none (gearmand's meaning): no certificate is asked for, so
    # the one gear holds is never sent and the workers carry no cn= identity.
    srv = tls_server(start_server, tls_pki)
    gear_jobs(srv.port, tls_pki)
    with Conn(srv) as admin:
        assert b"cn=" not in admin.admin("workers")


def test_with_require_gear_completes_jobs_and_its_cn_shows_in_workers_and_status(
        start_server, tls_pki):
    mon = free_port()
    srv = tls_server(start_server, tls_pki, "--monitor", f"127.0.0.1:{mon}",
                     verify="require", cert=(tls_pki.client_cert, tls_pki.client_key))
    gear_jobs(srv.port, tls_pki, count=3)
    with Conn(srv) as admin, Conn(srv) as worker:
        worker.send(CAN_DO, b"resize")
        worker.echo()
        listing = admin.admin("workers")
        # Neither set a client id: the certificate's CN stands in for it.
        assert b" cn=worker-1 : resize\n" in listing, listing

        def shows_cn():
            doc = http_status(mon)[1]
            return doc if any(w.get("tls_cn") == "worker-1" for w in doc["workers"]) else None
        doc = wait_for(shows_cn, what="tls_cn in /status")
        mine = [w for w in doc["workers"] if "resize" in w["functions"]]
        assert mine and mine[0]["tls_cn"] == "worker-1" and mine[0]["tls"] is True


def test_with_require_peers_without_a_certificate_or_from_another_ca_are_refused(
        start_server, tls_pki):
    srv = tls_server(start_server, tls_pki, "--verbose", "WARNING", verify="require",
                     cert=(tls_pki.client_cert, tls_pki.client_key))
    assert refused_at_handshake(tls_pki, srv.port)
    assert refused_at_handshake(tls_pki, srv.port, tls_pki.intruder_cert,
                                tls_pki.intruder_key)
    code, out = s_client(tls_pki, srv.port, "-tls1_2")      # no -cert
    assert negotiated(out)[1] in NO_CIPHER or code != 0, out
    assert "alert" in out, out
    # The good certificate still gets in, and the refusals are logged with OpenSSL's
    # reason and no key material.
    with Conn(srv) as good:
        good.echo(b"certified")
    wait_for(lambda: srv.log_text().count("TLS handshake with 127.0.0.1") >= 2,
             what="the refusals' log lines")
    log = srv.log_text()
    assert "peer did not return a certificate" in log or "certificate required" in log, log
    assert "certificate verify failed" in log, log
    assert "PRIVATE KEY" not in log


# --- admin access by certificate CN --------------------------------------------------------

def test_admin_allow_cn_lets_the_certificate_change_the_server_and_nobody_else(
        start_server, tls_pki):
    tls_port = free_port()
    srv = start_server("fastgear", "--ssl-port", str(tls_port),
                       *tls_pki.server_flags("optional"), "--admin-allow", "cn:worker-1")
    cert = (tls_pki.client_cert, tls_pki.client_key)
    # optional: a certificate is asked for, but a peer may come without; one that does
    # not verify is still refused at the handshake.
    assert refused_at_handshake(tls_pki, tls_port, tls_pki.intruder_cert, tls_pki.intruder_key)
    with tls_conn(tls_pki, tls_port, *cert) as operator, tls_conn(tls_pki, tls_port) as \
            anonymous, plain_conn(srv.port) as plain:
        assert operator.admin("maxqueue f 3") == b"OK\n"
        for outsider in (anonymous, plain):
            assert outsider.admin("maxqueue f 5") == (
                b"ERR ACCESS_DENIED 127.0.0.1+may+not+change+the+server+(--admin-allow)\r\n")
            assert outsider.admin("shutdown").startswith(DENIED)
            # Reads stay open to everyone.
            assert outsider.admin("status").endswith(b".\n")
            assert outsider.admin("version").startswith(b"OK ")
        assert srv.alive()
        assert operator.admin("shutdown") == b"OK\r\n"
    wait_for(lambda: not srv.alive(), what="the server to shut down")
    assert srv.proc.returncode == 0


# --- bad first bytes on either kind of port ---------------------------------------------

def test_plain_text_or_garbage_on_a_tls_port_closes_only_that_connection(
        start_server, tls_pki):
    srv = tls_server(start_server, tls_pki)
    with Conn(srv) as bystander:
        bystander.echo(b"before")
        for first_bytes in (pack(REQ, ECHO_REQ, data=b"plain packet"), b"status\r\n",
                            b"GET / HTTP/1.0\r\n\r\n", bytes(range(256)) * 4,
                            garbled_hello()):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw:
                raw.sendall(first_bytes)
                assert closed_by_server(raw), first_bytes[:20]
            bystander.echo(b"still served")
    assert srv.alive()


def test_a_tls_client_hello_to_a_plain_port_is_closed_and_others_keep_working(
        start_server, tls_pki):
    tls_port = free_port()
    srv = start_server("fastgear", "--ssl-port", str(tls_port), *tls_pki.server_flags())
    with plain_conn(srv.port) as bystander:
        bystander.echo(b"before")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw:
            raw.sendall(client_hello())
            assert closed_by_server(raw)
        code, out = s_client(tls_pki, srv.port)
        assert code != 0 and negotiated(out)[1] in NO_CIPHER, out
        bystander.echo(b"after")


def test_ssl_port_serves_tls_beside_the_plain_port_and_jobs_cross_between_them(
        start_server, tls_pki):
    tls_port = free_port()
    srv = start_server("fastgear", "--ssl-port", str(tls_port), *tls_pki.server_flags())
    with plain_conn(srv.port) as plain_client, tls_conn(tls_pki, tls_port) as tls_worker:
        run_one_job(plain_client, tls_worker, b"migrating")
    with tls_conn(tls_pki, tls_port) as tls_client, plain_conn(srv.port) as plain_worker:
        run_one_job(tls_client, plain_worker, b"migrating")
    _, out = s_client(tls_pki, tls_port)
    assert negotiated(out)[1] not in NO_CIPHER, out


# --- handshakes that never finish ---------------------------------------------------------

FLOOD = 1000


def test_a_flood_of_unfinished_handshakes_does_not_stop_a_tls_client_getting_its_jobs_done(
        start_server, tls_pki):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * FLOOD + 200
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the file descriptor limit {hard} is below the {need} this needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    # A long timeout: the whole flood must still be open while the jobs run.
    srv = tls_server(start_server, tls_pki, "--ssl-handshake-timeout", "600",
                     "-f", str(need + 100))
    hello = client_hello()
    flood = []
    try:
        for i in range(FLOOD):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            flood.append(s)
            if i % 2:
                s.sendall(hello[: len(hello) // 2])     # half a ClientHello, then silence
        # The server holds the whole flood (accepted, handshakes pending) before the jobs.
        wait_for(lambda: len(os.listdir(f"/proc/{srv.pid}/fd")) > FLOOD, timeout=30,
                 what="the server to accept the flood")
        with Conn(srv) as client, Conn(srv) as worker:
            for i in range(20):
                run_one_job(client, worker, b"busy", b"job-%d" % i)
        # The flood was open the whole time: the server dropped none of it.
        assert all(still_open(s) for s in flood)
    finally:
        for s in flood:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with Conn(srv) as after:
        after.echo(b"after the flood")


def test_a_stalled_handshake_is_dropped_after_the_handshake_timeout(start_server, tls_pki):
    srv = tls_server(start_server, tls_pki, "--ssl-handshake-timeout", "0.5")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as silent, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=5) as half, \
            Conn(srv) as finished:
        half.sendall(client_hello()[:40])
        assert closed_by_server(silent, timeout=30)
        assert closed_by_server(half, timeout=30)
        # A connection whose handshake finished (as long ago) is not subject to it.
        finished.echo(b"still here")


# --- start-up errors and gearmand's environment variables ---------------------------------

@pytest.fixture(scope="module")
def encrypted_key(tls_pki):
    path = tls_pki.dir / "encrypted.key"
    if not path.exists():
        subprocess.run([need_openssl(), "pkey", "-in", tls_pki.server_key, "-aes256",
                        "-passout", "pass:top-secret-passphrase", "-out", str(path)],
                       check=True, capture_output=True, timeout=60)
    return str(path)


@pytest.mark.parametrize("case", ["missing key", "key of another certificate",
                                  "encrypted key", "no certificate"])
def test_bad_key_files_stop_start_up_with_status_1_and_no_secret(tmp_path, tls_pki,
                                                                encrypted_key, case):
    pki = tls_pki
    flags = {
        "missing key": ["--ssl-certificate", pki.server_cert, "--ssl-key",
                        str(tmp_path / "nowhere.key")],
        "key of another certificate": ["--ssl-certificate", pki.server_cert,
                                       "--ssl-key", pki.stray_key],
        "encrypted key": ["--ssl-certificate", pki.server_cert, "--ssl-key", encrypted_key],
        "no certificate": ["--ssl-key", pki.server_key],
    }[case]
    expected = {
        "missing key": "--ssl-key " + str(tmp_path / "nowhere.key")
                       + ": cannot read it (No such file or directory)",
        "key of another certificate": f"--ssl-key {pki.stray_key}: does not match "
                                      f"--ssl-certificate {pki.server_cert}",
        "encrypted key": f"--ssl-key {encrypted_key}: not a usable PEM private key",
        "no certificate": "--ssl: needs --ssl-certificate (or GEARMAND_SERVER_PEM)",
    }[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEARMAND_")}
    code, err = serve_exit(tmp_path, "--ssl", *flags, env=env)
    assert code == 1, err
    assert expected in err, err
    assert "Traceback" not in err
    for secret in ("PRIVATE KEY", "top-secret-passphrase", "BEGIN"):
        assert secret not in err


def test_gearmand_environment_variables_give_the_files_when_the_flags_are_absent(
        start_server, tls_pki, monkeypatch):
    monkeypatch.setenv("GEARMAND_SERVER_PEM", tls_pki.server_cert)
    monkeypatch.setenv("GEARMAND_SERVER_KEY", tls_pki.server_key)
    monkeypatch.setenv("GEARMAND_CA_CERTIFICATE", tls_pki.ca)
    srv = start_server("fastgear", "--ssl", "--ssl-verify-clients", "require")
    srv.ssl_context = client_context(tls_pki, tls_pki.client_cert, tls_pki.client_key)
    with Conn(srv) as worker, Conn(srv) as admin:
        worker.send(CAN_DO, b"f")
        worker.echo()
        assert b"cn=worker-1 : f\n" in admin.admin("workers")
    assert refused_at_handshake(tls_pki, srv.port)


# --- limits hold over TLS --------------------------------------------------------------------

def test_a_packet_over_max_packet_on_tls_gets_the_plain_error_and_only_it_is_closed(
        start_server, tls_pki):
    srv = tls_server(start_server, tls_pki, "--max-packet", "4096")
    with Conn(srv) as bad, Conn(srv) as other:
        bad.send_raw(pack(REQ, ECHO_REQ, data=b"due") + HEADER.pack(REQ, ECHO_REQ, 4097))
        assert bad.recv() == (17, [b"due"])
        assert bad.expect(ERROR) == TOO_LARGE
        assert bad.closed()
        other.echo(b"x" * 4096)          # exactly --max-packet is served


# --- gearmand 1.1.20 -------------------------------------------------------------------------

@pytest.mark.gearmand_quirk
def test_gearmand_accepts_the_ssl_flags_but_serves_plain_text(start_server, tls_pki):
    # README compatibility list: Debian's gearmand 1.1.20 takes --ssl and its files and
    # then speaks clear text on -p; fastgear encrypts (the tests above).
    need_gearmand()
    srv = start_server("gearmand", "--ssl", *tls_pki.server_flags())
    _, out = s_client(tls_pki, srv.port, "-tls1_2")
    assert negotiated(out)[1] in NO_CIPHER, out
    with Conn(srv) as client, Conn(srv) as worker:    # plain text works
        client.echo(b"in clear text")
        run_one_job(client, worker, b"clear")
