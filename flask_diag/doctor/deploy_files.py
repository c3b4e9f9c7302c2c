"""Deployment files that start the development server (DIAG013).

A ``Procfile``, ``Dockerfile`` or compose file whose command is
``python app.py`` or ``flask run`` deploys the development server (the
``app.run()`` at the bottom of the module), whatever the code says::

    findings = scan([Path(".")], display=str)
"""

from __future__ import annotations

import re
import typing as t
from collections.abc import Iterable
from pathlib import Path

from .findings import Finding

__all__ = ["scan"]

_PATTERNS = ("Procfile", "Dockerfile", "Dockerfile.*", "*.dockerfile")
_COMPOSE = ("docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml")
# A command line: Procfile process lines, Dockerfile CMD/ENTRYPOINT/RUN-less
# commands, compose "command:" lines.
_COMMAND = re.compile(
    r"^\s*(?:[a-z][\w-]*:|CMD|ENTRYPOINT|command:)\s*(?P<command>.+)$", re.I
)
_DEV_SERVER = re.compile(
    r"""(?:^|[\s"'\[,])(?:python[0-9.]*["']?,?\s*["']?[\w./-]+\.py\b|"""
    r"""flask["']?,?\s*["']?run\b|-m["']?,?\s*["']?flask["']?,?\s*["']?run\b)"""
)


def _files(directory: Path) -> Iterable[Path]:
    for pattern in (*_PATTERNS, *_COMPOSE):
        yield from sorted(directory.glob(pattern))


def scan(
    directories: Iterable[Path], display: t.Callable[[Path], str]
) -> list[Finding]:
    """DIAG013 for each deployment command that runs the development server."""
    findings: list[Finding] = []
    seen: set[Path] = set()
    for directory in directories:
        for path in _files(directory):
            resolved = path.resolve()
            if resolved in seen or not path.is_file():
                continue
            seen.add(resolved)
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError):
                continue
            for number, line in enumerate(lines, 1):
                match = _COMMAND.match(line)
                if match is None or line.lstrip().startswith("#"):
                    continue
                if _DEV_SERVER.search(match.group("command")):
                    findings.append(
                        Finding.of(
                            "DIAG013",
                            f"{path.name} starts the development server "
                            f"({match.group('command').strip()[:60]})",
                            file=display(path),
                            line=number,
                        )
                    )
    return findings
