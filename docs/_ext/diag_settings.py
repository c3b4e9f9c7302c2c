"""The ``diag-settings`` directive: the settings reference, made from the code.

Renders every option of :data:`flask_diag.settings.OPTIONS` (environment
variable, Flask config key, keyword argument, accepted values, doc) with its
default from :class:`flask_diag.settings.Settings`, so the reference page can
never drift from what the code accepts. In a Markdown (MyST) page::

    ```{eval-rst}
    .. diag-settings::
    ```

Output: a summary table, then one section per setting (label
``setting-<name>``, e.g. ``{ref}`setting-worker_headers```) holding an
``envvar`` entry (so ``{envvar}`FLASK_DIAG_WORKER_HEADERS``` links to it).

The labels are registered with the standard domain by the directive itself:
MyST parses an ``{eval-rst}`` block as a separate document and only carries
over the targets at its top level, so ``.. _label:`` lines in the generated
text would be lost.
"""

from __future__ import annotations

import typing as t

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

if t.TYPE_CHECKING:
    from sphinx.application import Sphinx


def _literal(value: object) -> str:
    """``value`` as inline literal RST, booleans as on/off like the variables."""
    if isinstance(value, bool):
        value = "on" if value else "off"
    return f"``{value}``"


def _title(text: str, underline: str) -> list[str]:
    return [text, underline * len(text), ""]


def settings_rst() -> list[str]:
    """The reStructuredText of the whole reference."""
    from flask_diag import settings as settings_module

    defaults = settings_module.Settings()
    options = settings_module.OPTIONS
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - Setting (keyword)",
        "     - Environment variable",
        "     - Flask config key",
        "     - Default",
    ]
    for name, option in options.items():
        lines += [
            f"   * - :ref:`{name} <setting-{name}>`",
            f"     - ``{option.env}``",
            f"     - ``{option.config}``",
            f"     - {_literal(getattr(defaults, name))}",
        ]
    lines.append("")
    for name, option in options.items():
        lines += _title(f"``{name}``", "-")
        lines += [f".. envvar:: {option.env}", ""]
        lines += [f"   {line}" if line else "" for line in option.doc.splitlines()]
        lines += [
            "",
            f'   :Flask config key: ``app.config["{option.config}"]``',
            f"   :Keyword argument: ``{name}=`` (``Diag``, ``wrap``, middlewares)",
            f"   :Accepted values: {option.accepted}",
            f"   :Default: {_literal(getattr(defaults, name))}",
            "",
        ]
    return lines


class DiagSettingsDirective(SphinxDirective):
    """``.. diag-settings::``: the table and one entry per setting."""

    has_content = False
    required_arguments = 0
    optional_arguments = 0

    def run(self) -> list[nodes.Node]:
        from flask_diag import settings as settings_module

        # Rebuild this page when the settings change.
        self.env.note_dependency(settings_module.__file__)
        source = f"<diag-settings from {settings_module.__name__}>"
        content = StringList(settings_rst(), source=source)
        try:
            from sphinx.util.parsing import nested_parse_to_nodes
        except ImportError:  # Sphinx < 7.4
            from sphinx.util.nodes import nested_parse_with_titles

            container = nodes.Element()
            nested_parse_with_titles(self.state, content, container)
            result: list[nodes.Node] = list(container.children)
        else:
            result = nested_parse_to_nodes(self.state, content, source=source)
        self._label_sections(result, list(settings_module.OPTIONS))
        return result

    def _label_sections(self, result: list[nodes.Node], names: list[str]) -> None:
        """Give each setting's section the id and label ``setting-<name>``."""
        for node in result:
            if not isinstance(node, nodes.section):
                continue
            name = node[0].astext()
            if name not in names:
                continue
            label = f"setting-{name}"
            node["ids"].insert(0, label)
            # Only the setting- label: a bare section name ("loopback") would
            # clash with the labels of other pages.
            node["names"] = [label]


def setup(app: Sphinx) -> dict[str, t.Any]:
    app.add_directive("diag-settings", DiagSettingsDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
