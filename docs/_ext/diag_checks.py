"""The ``diag-checks`` directive: the doctor's table of checks, from the code.

Renders :data:`flask_diag.doctor.CHECKS` (id, level, kind, title, fix) as
one table, so the documentation can never drift from what ``flask diag
check`` reports. In a Markdown (MyST) page::

    ```{eval-rst}
    .. diag-checks::
    ```
"""

from __future__ import annotations

import typing as t

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

if t.TYPE_CHECKING:
    from sphinx.application import Sphinx


def checks_rst() -> list[str]:
    """The table as RST lines (a ``list-table``)."""
    from flask_diag.doctor import CHECKS

    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 10 8 8 30 44",
        "",
        "   * - id",
        "     - level",
        "     - kind",
        "     - what it finds",
        "     - fix",
    ]
    for check in CHECKS.values():
        lines += [
            f"   * - ``{check.id}``",
            f"     - {check.level}",
            f"     - {check.kind}",
            f"     - {_text(check.title)}",
            f"     - {_text(check.fix)}",
        ]
    return lines


def _text(value: str) -> str:
    # Plain text: nothing in a title or fix is meant as RST markup.
    return value.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`")


class DiagChecksDirective(SphinxDirective):
    """``.. diag-checks::``: the table of every check."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from flask_diag.doctor import findings

        self.env.note_dependency(findings.__file__)
        source = f"<diag-checks from {findings.__name__}>"
        container = nodes.container()
        self.state.nested_parse(StringList(checks_rst(), source=source), 0, container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, t.Any]:
    app.add_directive("diag-checks", DiagChecksDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
