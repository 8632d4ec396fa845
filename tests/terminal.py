"""Run a command with stdout and/or stderr on a pseudo-terminal, as a person at a terminal would."""

import os
import pty
import re
import subprocess
import threading

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_terminal(command, stdout_tty=False, stderr_tty=False, timeout=180):
    """(stdout, stderr, exit code); a stream on the terminal comes back as the whole terminal's text."""
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    env.pop("NO_COLOR", None)
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(c) for c in command], env=env, stdin=subprocess.DEVNULL,
                            stdout=slave if stdout_tty else subprocess.PIPE,
                            stderr=slave if stderr_tty else subprocess.PIPE)
    os.close(slave)
    screen = bytearray()

    def read_terminal():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            screen.extend(data)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    code = proc.wait(timeout=timeout)
    reader.join(timeout=10)
    os.close(master)
    terminal = screen.decode("utf-8", "replace").replace("\r\n", "\n")
    return (terminal if stdout_tty else out.decode()), (terminal if stderr_tty else err.decode()), code


def shows_a_bar(text: str, unit: str = "drawings") -> bool:
    """A rich progress bar's columns (count, rate, time left) were drawn."""
    plain = ANSI.sub("", text)
    return f"{unit}/s" in plain and "eta" in plain and bool(re.search(r"\d[\d,]*/\d[\d,]*", plain))
