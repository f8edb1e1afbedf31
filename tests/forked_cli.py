"""``python -m <module> args`` without the seconds of importing: forked from a process that has imported cnnlab.

Importing torch and Lightning takes ~9 s of CPU on the 2-core test machine, and the CLI tests would pay it for each
command. A multiprocessing fork server imports cnnlab's entry points once (per test worker); each command is a
fork of it that runs the module as ``__main__`` with its own argv, working directory, environment, stdin from
/dev/null and stdout/stderr into files, then exits with the command's status, as ``python -m`` would. What it
cannot show is what happens while importing (warnings printed at import, say): ``run_cli(..., fresh=True)``
starts a new interpreter for that. The processes the command starts (joblib's workers, DDP ranks, SLURM jobs) are
new interpreters as always.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import threading
import traceback

ENTRY_POINTS = ["cnnlab.train", "cnnlab.eval", "cnnlab.predict", "cnnlab.inspect", "cnnlab.report", "cnnlab.resume"]
_context = None


def context() -> multiprocessing.context.ForkServerContext:
    """The fork server's context; the server starts, and imports the entry points, at the first command."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload([__name__, *ENTRY_POINTS])
    return _context


class ForkedProcess:
    """A started command, with the part of ``subprocess.Popen`` the tests use: pid, poll, wait, send_signal."""

    def __init__(self, process: multiprocessing.process.BaseProcess, args: list[str]) -> None:
        self.process, self.args, self.pid = process, args, process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self.process.kill()


def start(
    module: str, args: list[str], cwd: str, env: dict[str, str], out: str, err: str | None = None, session: bool = False
) -> ForkedProcess:
    """Start ``python -m module args``: stdout into the file ``out``, stderr into ``err`` (None: into ``out`` too);
    ``session=True``: in a session and process group of its own, as ``Popen(start_new_session=True)``."""
    for path in {out, err or out}:
        open(path, "a").close()
    process = context().Process(target=run_as_main, args=(module, args, str(cwd), env, out, err or out, session))
    process.start()
    return ForkedProcess(process, ["python", "-m", module, *args])


def run_as_main(module: str, args: list[str], cwd: str, env: dict[str, str], out: str, err: str, session: bool) -> None:
    """In the forked child: become ``python -m module args`` and exit with its status (never returns)."""
    status = 1
    try:
        if session:
            os.setsid()
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out, os.O_WRONLY), (2, err, os.O_WRONLY)):
            if fd == 2 and err == out:
                os.dup2(1, 2)
                continue
            opened = os.open(path, flags | (os.O_APPEND if fd else 0))
            os.dup2(opened, fd)
            os.close(opened)
        sys.stdin = sys.__stdin__ = open(0, closefd=False)  # noqa: SIM115 (fds 0-2 stay open until exit)
        sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.chdir(cwd)
        sys.path.insert(0, os.getcwd())  # as `python -m` does: a module in the working directory imports
        os.environ.clear()
        os.environ.update(env)
        if env.get("OMP_NUM_THREADS", "").isdigit():  # read when torch loads: in the server, before this env
            import torch

            torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
        sys.argv = [module, *args]
        sys.modules.pop(module, None)  # run as __main__, as `python -m` does, not as the module the server imported
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                status = exit_.code or 0
            else:
                print(exit_.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        threading._shutdown()  # what an interpreter does at exit, in its order: join the threads, then atexit
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(status)
