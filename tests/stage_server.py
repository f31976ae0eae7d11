"""A warmed interpreter that runs stage scripts in forks of itself, for the tests.

A stage run as `python stages/<stage>.py …` spends ~4 s of this CPU importing torch, pandas and
scipy before its first line of work; the tests run about a hundred of them. This server imports
those once, then for each request forks: the child is a process of its own (its own exit code,
signals, torch threads, cwd and environment, files closed at exit) that runs the script as
`__main__`, exactly as `python script args` would, minus the imports. What the warm imports
print (a library's deprecation warning) is replayed at the top of each child's stderr, so a test
that reads a stage's stderr sees what a fresh process prints. Forking is safe because this
process never runs a torch or BLAS kernel itself. What a fork shares and a fresh process would
not is the hash seed: the byte-identity tests use a fresh process (conftest.run_stage(fresh=True)).

Protocol, one JSON object per line: the client sends {script, argv, cwd, env, stdout, stderr}
(the last two: files for the child's output); the server answers {"pid": …}, then, when the child
has ended, {"returncode": …} (negative: killed by that signal, as subprocess reports it).
"""
import atexit
import json
import os
import runpy
import sys
import tempfile
import traceback

WARM = ("torch", "numpy", "pandas", "pyarrow.parquet", "yaml", "jsonschema", "scipy.stats", "matplotlib")


def warm() -> bytes:
    """Import the heavy libraries with fd 2 caught; return what they wrote there."""
    with tempfile.TemporaryFile() as caught:
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            for name in WARM:
                try:
                    __import__(name)
                except ImportError:
                    pass
            sys.stderr.flush()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        return caught.read()


def child(req: dict, preamble: bytes) -> None:
    """In the fork: become `python script *argv` run in req["cwd"], then exit with its code."""
    code = 1
    try:
        for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, fd)
            os.close(out)
        os.write(2, preamble)
        null = os.open(os.devnull, os.O_RDONLY)  # fd 0 was the request pipe
        os.dup2(null, 0)
        os.close(null)
        sys.stdin = open(0, closefd=False)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = [req["script"], *req["argv"]]
        sys.path[0] = os.path.dirname(os.path.abspath(req["script"]))  # as `python script` sets it
        try:
            runpy.run_path(req["script"], run_name="__main__")
            code = 0
        except SystemExit as exc:  # the same mapping as the interpreter's
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:  # an uncaught error: the excepthook the stage set (cglib.cli logs it)
            sys.excepthook(*sys.exc_info())
            code = 1
        atexit._run_exitfuncs()  # logging.shutdown and the like, as at a normal exit
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code & 0xFF)


def serve() -> None:
    preamble = warm()
    requests, replies = sys.stdin, sys.stdout
    for line in requests:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(req, preamble)
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()
