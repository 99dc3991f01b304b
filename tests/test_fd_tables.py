"""More connections than one fd table's limit in one process (harness/load/fd_tables.py): threads that
unshare(CLONE_FILES) get a table of their own, each with the whole RLIMIT_NOFILE."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from harness import cli
from harness.load.fd_tables import tables_needed

# In a child: a soft limit of 100 descriptors, then sockets in this thread until EMFILE, then in two threads
# with their own fd table: a listener and 45 connected pairs each (91 descriptors per table, 182 in all),
# every pair carrying a byte through that thread's gevent hub.
CHILD = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import json, os, resource, socket, gevent
    from harness.load.fd_tables import FdTableThread
    resource.setrlimit(resource.RLIMIT_NOFILE, (100, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    gevent.sleep(0)  # this thread's hub first
    mine = []
    try:
        while True:
            mine.append(socket.socket())
    except OSError as exc:
        hit_limit = (len(mine), exc.errno)
    for s in mine:
        s.close()
    results = {}
    def body(table):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        def pair(n):
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
            client.sendall(b"x")
            return client, server, server.recv(1) == b"x"
        pairs = [g.get() for g in gevent.joinall([gevent.spawn(pair, n) for n in range(45)], raise_error=True)]
        results[table.name] = {"pairs": sum(ok for _, _, ok in pairs), "pid": os.getpid(),
                               "highest_fd": max(s.fileno() for c, s, _ in pairs)}
        table.ready()
        while not table.stopping:
            gevent.sleep(0.05)
        for c, s, _ in pairs:
            c.close(); s.close()
    tables = [FdTableThread(name, body) for name in ("a", "b")]
    for t in tables:
        t.start()
    stopped = [t.stop(gevent.sleep, 10) for t in tables]
    print(json.dumps({"hit_limit": hit_limit, "results": results, "pid": os.getpid(), "stopped": stopped,
                      "errors": [t.error for t in tables]}))
""")


def test_threads_with_their_own_fd_table_hold_more_sockets_than_the_limit():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    opened, errno = out["hit_limit"]
    assert opened < 100 and errno == 24  # EMFILE: the limit is real for one table
    assert out["errors"] == [None, None] and out["stopped"] == [True, True]
    for name in ("a", "b"):
        table = out["results"][name]
        assert table["pairs"] == 45 and table["pid"] == out["pid"]
        assert table["highest_fd"] < 100
    assert 2 * (1 + 2 * 45) > 100  # more descriptors open at once than one table allows


def test_tables_needed_splits_evenly_and_refuses_a_table_without_room():
    assert tables_needed(19_000, 20_000, 40) == (1, 19_000)
    assert tables_needed(25_000, 20_000, 40) == (2, 12_500)
    assert tables_needed(300, 300, 40) == (2, 150)  # a small limit keeps a quarter free
    assert tables_needed(100, 64, 60) == (0, 0)


def test_bench_refuses_idle_users_no_fd_tables_could_hold(capsys):
    assert cli.main(["bench", "--idle-users", "5000", "--fd-limit", "200"]) == 2
    err = capsys.readouterr().err
    assert "per fd table" in err and "ulimit -Hn" in err and "CAP_SYS_RESOURCE" in err and "LimitNOFILE" in err
    assert cli.main(["bench", "--fd-limit", "1000"]) == 2  # only the IDLE hold has fd tables


@pytest.mark.slow
def test_bench_holds_idle_users_beyond_one_fd_tables_limit_in_one_process(capsys):
    # 200 IDLE users where a table takes 160 descriptors: two tables or more (one runs out at about 130)
    code = cli.main(["bench", "--idle-users", "200", "--fd-limit", "160", "--duration", "2", "--delivery-rate", "5",
                     "--source-address", "127.0.0.2-127.0.0.3", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out)
    assert result["fd_tables"] >= 2 and result["fd_limit"] == 160
    assert result["idling_peak"] == 200 and result["idling_low"] == 200 and result["failures"] == 0
    tables = result["idling_per_fd_table"]
    assert len(tables) == result["fd_tables"] and sum(tables) == 200 and max(tables) < 160
    assert result["notify_samples"] > 0  # notifications reached users in both tables' share of the run


def test_bench_refuses_when_a_thread_cannot_get_its_own_fd_table(monkeypatch):
    from harness.errors import ConfigError
    from harness.load import bench_command, fd_tables

    monkeypatch.setattr(fd_tables, "probe", lambda: "unshare(CLONE_FILES): Operation not permitted")
    with pytest.raises(ConfigError, match=r"cannot get its own fd table here \(unshare\(CLONE_FILES\): Operation not permitted\).*"
                                          r"CAP_SYS_RESOURCE.*at most 744 users"):
        bench_command.check_fd_limit(2000, cap=1000)
    assert bench_command.check_fd_limit(500, cap=1000) == 1  # the limit covers them: one table, no probe needed
