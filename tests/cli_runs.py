"""Run `imgsearch …` inside the test process, with an environment of its own: the one runner the tests share."""

from __future__ import annotations

from collections.abc import Callable

from cli import main


def in_process(monkeypatch, capsys, env: dict[str, str]) -> Callable[..., tuple[int, str, str]]:
    """A `run(*args)` giving (exit status, stdout, stderr) of `imgsearch *args`, with `env` set and no periodic
    progress lines."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMGSEARCH_PROGRESS_SECONDS", "0")

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(list(args))
        out, err = capsys.readouterr()
        return status, out, err

    return run
