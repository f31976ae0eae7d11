"""tests/stage_server.py: a stage run in a fork of the warmed server behaves as `python script`
does in a new interpreter (output, exit code, uncaught errors, cwd, argv, environment,
sys.path), and a run past its timeout is killed."""
import subprocess
import sys
import textwrap

import pytest

from conftest import StageServer, venv_env

SCRIPT = textwrap.dedent('''\
    import os, sys
    print("argv", sys.argv[1:], "cwd", os.path.basename(os.getcwd()), "env", os.environ.get("CG_PROBE"))
    print("path0", os.path.basename(sys.path[0]), "name", __name__, "stdin", repr(sys.stdin.read()))
    print("to stderr", file=sys.stderr)
    mode = sys.argv[1]
    if mode == "exit":
        sys.exit(int(sys.argv[2]))
    if mode == "message":
        sys.exit("a message instead of a code")
    if mode == "raise":
        raise ValueError("boom")
    if mode == "hook":  # a stage's own excepthook (cglib.cli logs crashes) is the one called
        sys.excepthook = lambda kind, value, tb: print("hooked:", value, file=sys.stderr)
        raise KeyError("k")
    if mode == "atexit":
        import atexit
        atexit.register(lambda: print("at exit"))
    if mode == "sleep":
        import time
        time.sleep(60)
    ''')


@pytest.fixture(scope="module")
def server():
    s = StageServer()
    yield s
    s.close()


@pytest.mark.parametrize("args", [["ok"], ["exit", "0"], ["exit", "2"], ["exit", "300"], ["message"], ["raise"],
                                  ["hook"], ["atexit"]])
def test_a_fork_of_the_server_behaves_as_a_new_interpreter(server, tmp_path, args):
    script = tmp_path / "bin" / "script.py"
    script.parent.mkdir()
    script.write_text(SCRIPT)
    (tmp_path / "here").mkdir()
    env = dict(venv_env(), CG_PROBE="yes")
    cmd = [sys.executable, str(script), *args]
    fresh = subprocess.run(cmd, cwd=tmp_path / "here", env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    forked = server.run(cmd, tmp_path / "here", env, timeout=60)
    assert (forked.returncode, forked.stdout) == (fresh.returncode, fresh.stdout)
    # stderr: the same, except the file name a traceback shows for the script's frames (runpy's
    # frames come before them)
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]
    assert forked.stdout.startswith("argv " + repr(args) + " cwd here env yes\npath0 bin name __main__ stdin ''\n")
    if args == ["raise"]:
        assert "Traceback" in forked.stderr and forked.returncode == 1


def test_a_run_past_its_timeout_is_killed_and_the_server_serves_on(server, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    with pytest.raises(subprocess.TimeoutExpired):
        server.run([sys.executable, str(script), "sleep"], tmp_path, venv_env(), timeout=1)
    again = server.run([sys.executable, str(script), "exit", "5"], tmp_path, venv_env(), timeout=60)
    assert again.returncode == 5 and again.stderr == "to stderr\n"
