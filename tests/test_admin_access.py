"""Admin access control (`--admin-allow`, `--admin-allow-read`) against real servers.

gearmand 1.1.20 has no access control: anyone who reaches the port may `cancel job` or
`drop function`. fastgear keeps that default (a drop-in), and with `--admin-allow LIST`
only the listed peers may use the commands that change the server; with
`--admin-allow-read LIST` only those (and the --admin-allow ones) may use the rest. The
whole 127.0.0.0/8 is loopback on Linux, so a client socket bound to 127.0.0.2 or
127.0.0.3 is a different peer of the same server: the lists below include or exclude
127.0.0.1 to test both sides from one machine. `gearadmin` (Debian gearman-tools) and
`fastgear admin` must show the refusal; the HTTP monitor answers 403. The matcher and
the command classification have unit tests at the end.
"""
import http.client
import json
import shutil
import socket
import subprocess
import sys
import time

import pytest
from conftest import free_port, missing, wait_for
from gearproto import CAN_DO, GRAB_JOB, JOB_ASSIGN, SUBMIT_JOB_BG, WORK_FAIL, Conn

from fastgear import access, admin, config

DENIED = b"ERR ACCESS_DENIED "
# Every text admin command that changes the server, in forms that would succeed (or
# fail only on an unknown name) if allowed.
CHANGING = ["shutdown", "shutdown graceful", "cancel job H:x:1", "create function f",
            "drop function f", "maxqueue f 3", "verbose", "retry f 2 1", "retry f default",
            "dead requeue H:x:1", "dead requeue-function f", "dead discard H:x:1"]
# The read-only ones: (line, answered with a `.`-terminated listing).
READS = [("status", True), ("prioritystatus", True), ("workers", True), ("show jobs", True),
         ("show unique jobs", True), ("version", False), ("getpid", False),
         ("dead", True), ("retry", True), ("results", False)]


def peer(srv, source):
    """A raw connection to srv from the loopback address `source`."""
    conn = Conn()
    conn.sock = socket.create_connection((srv.host, srv.port), timeout=5,
                                         source_address=(source, 0))
    return conn


def ask(conn, line, listing=False):
    """Send an admin line; the reply: one line, or through `.\\n` for a listing (an
    ERR line ends a listing too)."""
    conn.sock.sendall(line.encode() + b"\r\n")
    while True:
        if conn.buf.startswith(b"ERR ") and b"\n" in conn.buf:
            end = conn.buf.index(b"\n") + 1
            break
        if not listing and b"\n" in conn.buf:
            end = conn.buf.index(b"\n") + 1
            break
        if listing and (conn.buf.startswith(b".\n") or b"\n.\n" in conn.buf):
            end = 2 if conn.buf.startswith(b".\n") else conn.buf.index(b"\n.\n") + 3
            break
        conn._fill(time.monotonic() + 5)
    out, conn.buf = conn.buf[:end], conn.buf[end:]
    return out


def dead_letter(srv, function=b"f"):
    """Make one dead letter of `function` (a failed background job, no retries)."""
    with Conn(srv) as client, Conn(srv) as worker:
        handle = client.submit(function, b"payload", b"", kind=SUBMIT_JOB_BG)
        worker.send(CAN_DO, function)
        worker.send(GRAB_JOB)
        assert worker.expect(JOB_ASSIGN)[0] == handle
        worker.send(WORK_FAIL, handle)
        worker.echo()
    return handle


def http_request(srv_port, method, path, source="127.0.0.1", host="127.0.0.1"):
    conn = http.client.HTTPConnection(host, srv_port, timeout=5,
                                      source_address=(source, 0))
    try:
        conn.request(method, path)
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def monitored(start_server, *flags, host="127.0.0.1"):
    port = free_port()
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    srv = start_server("fastgear", "--monitor", where, *flags)
    srv.monitor_port = port
    wait_for(lambda: _answers(host, port), what="the monitor")
    return srv


def _answers(host, port):
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


# --- the text admin protocol -----------------------------------------------------------

def test_every_changing_command_is_refused_outside_admin_allow_and_changes_nothing(
        start_server):
    srv = start_server("fastgear", "--admin-allow", "127.0.0.1/32")
    handle = dead_letter(srv)
    with peer(srv, "127.0.0.2") as outsider:
        for line in CHANGING + [f"dead discard {handle.decode()}"]:
            reply = ask(outsider, line)
            assert reply == (b"ERR ACCESS_DENIED 127.0.0.2+may+not+change+the+server+"
                             b"(--admin-allow)\r\n"), line
        # Nothing happened: the function and its dead letter are still there, the
        # server still runs and still answers the reads.
        assert b"f\t" in ask(outsider, "status", listing=True)
        assert handle in ask(outsider, "dead", listing=True)
    assert srv.alive()


def test_changing_commands_still_work_from_an_address_in_admin_allow(start_server):
    srv = start_server("fastgear", "--admin-allow", "10.0.0.0/8,127.0.0.1")
    dead = dead_letter(srv)
    with Conn(srv) as client, peer(srv, "127.0.0.1") as insider:
        assert ask(insider, "create function g") == b"OK\r\n"
        assert ask(insider, "maxqueue g 3") == b"OK\n"
        queued = client.submit(b"g", b"x", b"", kind=SUBMIT_JOB_BG)
        assert ask(insider, f"cancel job {queued.decode()}") == b"OK\r\n"
        assert ask(insider, "drop function g") == b"OK\r\n"
        assert ask(insider, "verbose") == b"OK ERROR\n"
        assert ask(insider, "retry f 2 1") == b"OK\r\n"
        assert ask(insider, "retry f default") == b"OK\r\n"
        assert ask(insider, f"dead requeue {dead.decode()}").startswith(b"OK H:")
        assert ask(insider, "dead requeue-function f") == b"OK 0\n"
        assert ask(insider, "dead discard H:none:1") == b"ERR UNKNOWN_JOB\r\n"


def test_shutdown_is_refused_outside_admin_allow_and_accepted_inside(start_server):
    srv = start_server("fastgear", "--admin-allow", "127.0.0.1")
    with peer(srv, "127.0.0.2") as outsider:
        assert ask(outsider, "shutdown").startswith(DENIED)
        assert ask(outsider, "shutdown graceful").startswith(DENIED)
    assert srv.alive()
    with peer(srv, "127.0.0.1") as insider:
        assert ask(insider, "shutdown") == b"OK\r\n"
    wait_for(lambda: not srv.alive(), what="the server to stop")
    assert srv.proc.returncode == 0


def test_read_commands_stay_open_to_everyone_without_admin_allow_read(start_server):
    srv = start_server("fastgear", "--admin-allow", "127.0.0.1")
    with peer(srv, "127.0.0.2") as outsider:
        for line, listing in READS:
            assert not ask(outsider, line, listing).startswith(DENIED), line


def test_admin_allow_read_limits_the_reads_to_its_peers_and_those_of_admin_allow(
        start_server):
    srv = start_server("fastgear", "--admin-allow", "127.0.0.2",
                       "--admin-allow-read", "127.0.0.3/32,::1")
    with peer(srv, "127.0.0.1") as stranger, peer(srv, "127.0.0.3") as reader, \
            peer(srv, "127.0.0.2") as operator:
        for line, listing in READS:
            assert ask(stranger, line, listing) == (
                b"ERR ACCESS_DENIED 127.0.0.1+may+not+use+admin+commands+"
                b"(--admin-allow-read)\r\n"), line
            assert not ask(reader, line, listing).startswith(DENIED), line
            assert not ask(operator, line, listing).startswith(DENIED), line
        assert ask(stranger, "create function f").startswith(DENIED)
        assert ask(reader, "create function f") == (
            b"ERR ACCESS_DENIED 127.0.0.3+may+not+change+the+server+(--admin-allow)\r\n")
        assert ask(operator, "create function f") == b"OK\r\n"
        # Unknown commands are answered as gearmand answers them, whoever asks.
        assert ask(stranger, "bogus") == b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"


def test_admin_allow_read_alone_also_keeps_unlisted_peers_from_changing_anything(
        start_server):
    srv = start_server("fastgear", "--admin-allow-read", "127.0.0.3")
    with peer(srv, "127.0.0.1") as stranger, peer(srv, "127.0.0.3") as reader:
        assert ask(stranger, "create function f") == (
            b"ERR ACCESS_DENIED 127.0.0.1+may+not+change+the+server+"
            b"(--admin-allow-read)\r\n")
        assert ask(reader, "create function f") == b"OK\r\n"


def test_refusals_are_logged_with_address_and_command_but_no_arguments(start_server):
    srv = start_server("fastgear", "--admin-allow", "127.0.0.1")
    with peer(srv, "127.0.0.2") as outsider:
        port = outsider.sock.getsockname()[1]
        ask(outsider, "drop function secret-function-name")
        ask(outsider, "cancel job H:secret-handle:1")
    wait_for(lambda: "cancel job" in srv.log_text(), what="the refusal's log line")
    log = srv.log_text()
    assert (f"access denied: admin command drop function from 127.0.0.2:{port}: "
            "not in --admin-allow") in log
    assert "secret" not in log


def test_default_keeps_gearmands_open_admin_port(start_server):
    # gearmand 1.1.20 has no access control; without the flags neither has fastgear.
    srv = start_server("fastgear")
    with peer(srv, "127.0.0.2") as anyone:
        assert ask(anyone, "create function f") == b"OK\r\n"
        assert ask(anyone, "drop function f") == b"OK\r\n"
        assert ask(anyone, "status", listing=True) == b".\n"


def test_gearadmin_and_fastgear_admin_show_the_refusal(start_server):
    gearadmin = shutil.which("gearadmin")
    if gearadmin is None:
        missing("gearadmin", debian="gearman-tools")
    srv = start_server("fastgear", "--admin-allow", "10.1.2.0/24",
                       "--admin-allow-read", "10.1.2.0/24")
    base = [gearadmin, "-h", "127.0.0.1", "-p", str(srv.port)]
    res = subprocess.run(base + ["--drop-function", "f"], capture_output=True, timeout=30, check=False)
    assert res.stderr.startswith(
        b"Error: ACCESS_DENIED 127.0.0.1+may+not+change+the+server+(--admin-allow)"), res
    res = subprocess.run(base + ["--status"], capture_output=True, timeout=30, check=False)
    assert res.stderr.startswith(b"Error: ACCESS_DENIED 127.0.0.1+may+not+use+admin+"
                                 b"commands+(--admin-allow-read)"), res
    res = subprocess.run([sys.executable, "-m", "fastgear", "admin", "-h", "127.0.0.1",
                          "-p", str(srv.port), "--status"], capture_output=True, timeout=30, check=False)
    assert res.returncode == 1 and b"ACCESS_DENIED" in res.stderr, res
    assert b"Traceback" not in res.stderr


@pytest.mark.parametrize("flag, value, reason", [
    ("--admin-allow", "10.0.0.300", "'10.0.0.300' is not an IPv4/IPv6 address"),
    ("--admin-allow", "10.0.0.1/24", "the network is 10.0.0.0/24"),
    ("--admin-allow-read", "127.0.0.1,,::1", "an entry is empty"),
    ("--admin-allow-read", "localhost", "host names are not resolved"),
])
def test_a_bad_list_stops_start_up_with_status_1_naming_flag_and_entry(tmp_path, flag,
                                                                      value, reason):
    res = subprocess.run([sys.executable, "-m", "fastgear", "serve", "-p", str(free_port()),
                          "--log-file", "none", "--monitor", "off", "-P",
                          str(tmp_path / "pid"), flag, value],
                         capture_output=True, timeout=30, cwd=str(tmp_path), check=False)
    assert res.returncode == 1
    err = res.stderr.decode()
    assert err.startswith(f"fastgear: error: {flag}: ") and reason in err, err
    assert "Traceback" not in err


# --- the HTTP monitor --------------------------------------------------------------------

def test_monitor_actions_outside_admin_allow_get_403_and_change_nothing(start_server):
    srv = monitored(start_server, "--admin-allow", "127.0.0.1")
    handle = dead_letter(srv).decode()
    for method, path in (("POST", f"/dead/{handle}/requeue"), ("DELETE", f"/dead/{handle}"),
                         ("POST", "/dead/requeue?function=f")):
        status, body = http_request(srv.monitor_port, method, path, source="127.0.0.2")
        assert status == 403, (method, path)
        assert json.loads(body) == {
            "error": "127.0.0.2 may not change the server (--admin-allow)"}
    # Reads stay open, and the dead letter is still there for an allowed peer.
    status, body = http_request(srv.monitor_port, "GET", "/dead", source="127.0.0.2")
    assert status == 200 and json.loads(body)["dead"][0]["handle"] == handle
    status, body = http_request(srv.monitor_port, "DELETE", f"/dead/{handle}", source="127.0.0.1")
    assert status == 200 and json.loads(body)["discarded"] is True
    wait_for(lambda: "access denied: monitor request 'DELETE /dead/" in srv.log_text(),
             what="the refusal's log line")


def test_monitor_pages_follow_admin_allow_read_except_healthz(start_server):
    srv = monitored(start_server, "--admin-allow-read", "127.0.0.3")
    for path in ("/status", "/metrics", "/", "/dead", "/jobs"):
        status, body = http_request(srv.monitor_port, "GET", path, source="127.0.0.1")
        assert status == 403, path
        assert "--admin-allow-read" in json.loads(body)["error"]
        assert http_request(srv.monitor_port, "GET", path, source="127.0.0.3")[0] != 403, path
    assert http_request(srv.monitor_port, "GET", "/healthz", source="127.0.0.1") == (200, b"ok\n")


def test_ipv6_peers_are_matched_against_ipv6_entries(start_server):
    try:
        socket.create_connection(("::1", 9), timeout=0.2).close()
    except ConnectionRefusedError:
        pass
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    srv = monitored(start_server, "--admin-allow-read", "::1/128", host="::1")
    assert http_request(srv.monitor_port, "GET", "/status", source="::1", host="::1")[0] == 200
    with peer(srv, "127.0.0.1") as v4:
        assert ask(v4, "status", listing=True).startswith(DENIED)


# --- unit: the matcher, the policy and the command classes ----------------------------

def test_cidr_entries_match_the_addresses_inside_them_only():
    acl = access.parse_list("10.0.0.0/8, 192.168.1.7 ,fd00::/8,::1")
    inside = ["10.0.0.1", "10.255.255.255", "192.168.1.7", "fd12::3", "::1",
              "::ffff:10.1.2.3"]
    outside = ["11.0.0.1", "192.168.1.8", "fe80::1", "::2", "127.0.0.1", "not-an-ip", ""]
    assert all(acl.matches(access.Peer(ip)) for ip in inside)
    assert not any(acl.matches(access.Peer(ip)) for ip in outside)


def test_an_ipv4_entry_never_matches_an_ipv6_peer_and_the_reverse():
    assert not access.parse_list("0.0.0.0/0").matches(access.Peer("::1"))
    assert not access.parse_list("::/0").matches(access.Peer("10.0.0.1"))
    assert access.parse_list("0.0.0.0/0").matches(access.Peer("::ffff:8.8.8.8"))


def test_cn_entries_match_only_a_peer_with_that_certificate_cn():
    acl = access.parse_list("cn:ops-admin,cn:Monitoring Box")
    assert acl.matches(access.Peer("10.0.0.1", "ops-admin"))
    assert acl.matches(access.Peer("10.0.0.1", "Monitoring Box"))
    assert not acl.matches(access.Peer("10.0.0.1", "ops-admin2"))
    assert not acl.matches(access.Peer("10.0.0.1", "OPS-ADMIN"))
    assert not acl.matches(access.Peer("10.0.0.1"))
    assert not acl.matches(access.Peer("ops-admin"))


def test_none_is_a_list_that_matches_nobody():
    acl = access.parse_list("none")
    assert not acl.matches(access.Peer("127.0.0.1"))
    assert not access.Policy(write=acl).may_change(access.Peer("127.0.0.1"))


@pytest.mark.parametrize("text, reason", [
    ("", "the list is empty"), ("  ", "the list is empty"), ("1.2.3.4,", "an entry is empty"),
    ("1.2.3.4/33", "not an IPv4/IPv6 address"), ("10.0.0.5/8", "the network is 10.0.0.0/8"),
    ("::1/64", "the network is ::/64"), ("example.com", "host names are not resolved"),
    ("cn:", "needs a name"), ("cn:" + "x" * 65, "at most 64 bytes"),
    ("cn:a\nb", "control character"), ("none,10.0.0.1", "'none' must be the whole list"),
])
def test_parse_errors_name_the_bad_entry(text, reason):
    with pytest.raises(access.AccessError, match=reason):
        access.parse_list(text)
    with pytest.raises(config.ConfigError, match="^--admin-allow: "):
        config.validate(config.Config(admin_allow=text))


def test_the_policy_combines_the_two_lists():
    a, b, c = (access.Peer(ip) for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    open_ = access.Policy()
    assert open_.open and open_.may_change(c) and open_.may_read(c)
    write_only = access.Policy(write=access.parse_list("10.0.0.1"))
    assert write_only.may_change(a) and not write_only.may_change(b)
    assert write_only.may_read(b)
    both = access.Policy(write=access.parse_list("10.0.0.1"),
                         read=access.parse_list("10.0.0.2"))
    assert both.may_read(a) and both.may_read(b) and not both.may_read(c)
    assert both.may_change(a) and not both.may_change(b)
    read_only = access.Policy(read=access.parse_list("10.0.0.2"))
    assert read_only.may_change(b) and not read_only.may_change(c)
    assert read_only.flag_for(True) == "--admin-allow-read"
    assert both.flag_for(True) == "--admin-allow"
    policy = access.Policy.from_config(config.Config(admin_allow="cn:x", admin_allow_read=None))
    assert policy.has_names() and policy.read is None


def test_every_admin_command_is_classed_as_read_or_change():
    for line in CHANGING + ["SHUTDOWN", "Cancel Job x", "maxqueue", "create x",
                            "dead REQUEUE x"]:
        assert admin.command_kind(line.encode())[0] == admin.CHANGE, line
    for line, _ in READS + [("show", False), ("dead f", False), ("result H:x:1", False),
                            ("result unique k", False)]:
        assert admin.command_kind(line.encode())[0] == admin.READ, line
    for line in ("", "bogus", " status", "a b c d e f"):
        assert admin.command_kind(line.encode()) == (None, "")
    # The log line names the command, never its arguments, and is printable.
    assert admin.command_kind(b"drop function secret") == (admin.CHANGE, "drop function")
    assert admin.command_kind(b"cancel \x1b[31m x")[1] == "cancel \\x1b[31m"


def test_refusal_log_lines_are_rate_limited():
    lines = []
    refusals = access.RefusalLog(lines.append, per_second=3)
    for _ in range(50):
        refusals.refused("admin command", "shutdown", access.Peer("10.0.0.9", "a\nb"),
                         4000, "--admin-allow")
    assert 3 <= len(lines) <= 6   # at most two one-second windows on a slow machine
    assert lines[0] == ("access denied: admin command shutdown from 10.0.0.9:4000 "
                        "(cn='a\\nb'): not in --admin-allow")
