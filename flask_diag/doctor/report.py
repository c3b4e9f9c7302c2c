"""The doctor's report: text for a terminal, JSON for CI.

Text is grouped by level (errors first), coloured only when the output is a
terminal (``click.echo`` strips the colours otherwise), and ends with a
summary line. The JSON form is stable: keys and findings sorted, schema
version ``1`` (see the docs page)::

    {"version": 1, "target": "app:app",
     "summary": {"error": 1, "warning": 0, "info": 0, "ignored": 0},
     "findings": [{"id": "DIAG001", "level": "error", "message": "...",
                   "file": "app.py", "line": 49, "fix": "..."}]}
"""

from __future__ import annotations

import dataclasses
import json

import click

from .findings import Finding
from .findings import LEVELS

__all__ = ["Report"]

_COLOURS = {"error": "red", "warning": "yellow", "info": "cyan"}
_HEADINGS = {"error": "Errors", "warning": "Warnings", "info": "Info"}


@dataclasses.dataclass
class Report:
    """The findings of one ``check`` run (ignored ones already removed)."""

    target: str
    findings: list[Finding]
    ignored: int = 0

    def __post_init__(self) -> None:
        unique: dict[tuple[str, str | None, int | None, str], Finding] = {}
        for finding in self.findings:
            unique.setdefault(
                (finding.id, finding.file, finding.line, finding.message), finding
            )
        self.findings = sorted(unique.values(), key=Finding.sort_key)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {level: 0 for level in LEVELS}
        for finding in self.findings:
            counts[finding.level] += 1
        return counts

    @property
    def exit_code(self) -> int:
        """1 when any error was found, else 0."""
        return 1 if self.counts()["error"] else 0

    def as_json(self) -> str:
        data = {
            "version": 1,
            "target": self.target,
            "summary": {**self.counts(), "ignored": self.ignored},
            "findings": [f.as_dict() for f in self.findings],
        }
        return json.dumps(data, indent=2, sort_keys=True)

    def summary(self) -> str:
        counts = self.counts()
        parts = [
            f"{counts['error']} error{'s' if counts['error'] != 1 else ''}",
            f"{counts['warning']} warning{'s' if counts['warning'] != 1 else ''}",
            f"{counts['info']} info",
        ]
        text = ", ".join(parts)
        if self.ignored:
            text += f" ({self.ignored} ignored)"
        return text

    def lines(self) -> list[str]:
        """The text report, with ANSI styles (``click.echo`` strips them)."""
        out = [click.style(f"flask_diag check: {self.target}", bold=True)]
        for level in LEVELS:
            group = [f for f in self.findings if f.level == level]
            if not group:
                continue
            colour = _COLOURS[level]
            out.append("")
            out.append(
                click.style(f"{_HEADINGS[level]} ({len(group)})", fg=colour, bold=True)
            )
            for finding in group:
                out.append(
                    f"  {click.style(finding.id, fg=colour, bold=True)} "
                    f"{finding.location}: {finding.message}"
                )
                out.append(f"      fix: {finding.fix}")
        out.append("")
        verdict = self.summary()
        if not self.findings:
            verdict += ": no problems found"
        colour = "red" if self.exit_code else ("yellow" if self.findings else "green")
        out.append(click.style(verdict, fg=colour, bold=True))
        return out

    def echo(self, *, fmt: str = "text", color: bool | None = None) -> None:
        if fmt == "json":
            click.echo(self.as_json())
            return
        for line in self.lines():
            click.echo(line, color=color)
