"""Static checks: the app's own source, read with :mod:`ast`, never run.

:func:`scan` reads each file once and returns the findings plus a few facts
the runtime and server checks use (does the app use ``flask.session``, where
is the ``Flask(...)`` made, does it call its own URLs)::

    >>> result = scan_source('''
    ... from flask import Flask
    ... app = Flask(__name__)
    ... if __name__ == "__main__":
    ...     app.secret_key = "dev"
    ...     app.run()
    ... ''', "app.py")
    >>> [(f.id, f.line) for f in result.findings]
    [('DIAG011', 5), ('DIAG014', 5)]

What counts as a *request handler* (for DIAG016, DIAG020-DIAG023): a function
decorated with ``@x.route``, ``@x.get`` ... ``@x.before_request``,
``@x.errorhandler`` (on an app or a blueprint), a method of a class based
view (``MethodView``), and the functions of the same module they call,
transitively.
"""

from __future__ import annotations

import ast
import dataclasses
import typing as t
from collections.abc import Iterable
from collections.abc import Iterator
from pathlib import Path

from ..secret_key import is_main_test
from .findings import Finding

__all__ = ["StaticResult", "scan", "scan_source"]

_ROUTE_DECORATORS = frozenset(
    {
        "route",
        "get",
        "post",
        "put",
        "patch",
        "delete",
        "before_request",
        "before_app_request",
        "after_request",
        "after_app_request",
        "teardown_request",
        "errorhandler",
        "app_errorhandler",
    }
)
_VIEW_METHODS = frozenset({"get", "post", "put", "patch", "delete", "dispatch_request"})
# Setting up the app: what must happen at import, never only under __main__.
_SETUP_ATTRIBUTES = frozenset(
    {"secret_key", "config", "wsgi_app", "session_interface", "json"}
)
_SETUP_METHODS = frozenset(
    {
        "register_blueprint",
        "before_request",
        "after_request",
        "teardown_appcontext",
        "teardown_request",
        "register_error_handler",
        "add_url_rule",
        "errorhandler",
    }
)
_CONFIG_METHODS = frozenset(
    {
        "update",
        "from_object",
        "from_pyfile",
        "from_envvar",
        "from_mapping",
        "from_prefixed_env",
        "from_file",
        "setdefault",
    }
)
# Development-only settings: having them only under __main__ is the point.
_DEV_ONLY_KEYS = frozenset(
    {"DEBUG", "TESTING", "ENV", "TEMPLATES_AUTO_RELOAD", "EXPLAIN_TEMPLATE_LOADING"}
)
_MUTATORS = frozenset(
    {
        "append",
        "appendleft",
        "extend",
        "extendleft",
        "insert",
        "pop",
        "popleft",
        "popitem",
        "remove",
        "clear",
        "update",
        "add",
        "discard",
        "setdefault",
        "sort",
        "reverse",
        "rotate",
        "subtract",
    }
)
_CONTAINERS = frozenset(
    {"list", "dict", "set", "Counter", "defaultdict", "deque", "OrderedDict"}
)
_RANDOM = frozenset(
    {
        "os.urandom",
        "secrets.token_hex",
        "secrets.token_bytes",
        "secrets.token_urlsafe",
        "uuid.uuid4",
        "uuid.uuid1",
    }
)
_HTTP_MODULES = ("requests", "httpx", "urllib3")
_HTTP_VERBS = frozenset(
    {"get", "post", "put", "patch", "delete", "head", "options", "request", "stream"}
)
_OWN_URL_ATTRIBUTES = frozenset({"host_url", "url_root", "base_url", "url", "host"})
_DEBUGGER_MODULES = frozenset(
    {
        "pdb",
        "ipdb",
        "rpdb",
        "pudb",
        "remote_pdb",
        "web_pdb",
        "flask_diag",
        "flask_diag.pdb",
    }
)
_SESSION_USERS = ("flask.session", "flask.flash", "flask_login", "flask_wtf")


@dataclasses.dataclass
class StaticResult:
    """What :func:`scan` found."""

    findings: list[Finding] = dataclasses.field(default_factory=list)
    #: The app reads or writes ``flask.session`` (or flashes, or uses an
    #: extension that signs with the secret key).
    uses_session: bool = False
    #: Where ``Flask(...)`` is called: ``(file, line)``.
    flask_lines: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    #: Where ``DebuggedApplication(...)`` is called.
    debugger_lines: list[tuple[str, int]] = dataclasses.field(default_factory=list)

    def merge(self, other: StaticResult) -> None:
        self.findings.extend(other.findings)
        self.uses_session = self.uses_session or other.uses_session
        self.flask_lines.extend(other.flask_lines)
        self.debugger_lines.extend(other.debugger_lines)

    def ids(self) -> set[str]:
        return {finding.id for finding in self.findings}


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and is_main_test(node.test)


def _walk_shallow(node: ast.AST) -> Iterator[ast.AST]:
    """Like :func:`ast.walk` without entering nested functions and classes."""
    todo = [node]
    while todo:
        current = todo.pop()
        yield current
        for child in ast.iter_child_nodes(current):
            if not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
            ):
                todo.append(child)


def _short(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _str_key(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


class _Module:
    """The checks of one source file."""

    def __init__(self, tree: ast.Module, filename: str) -> None:
        self.tree = tree
        self.filename = filename
        self.result = StaticResult()
        self.imports: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    local = alias.asname or alias.name.split(".")[0]
                    full = alias.name if alias.asname else alias.name.split(".")[0]
                    self.imports[local] = full
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (
                        f"{node.module}.{alias.name}"
                    )
        self.scoped: dict[str, ast.stmt] = {}
        self.app_names = {"app"}
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value:
                if self.qualname(_call_func(node.value)) == "flask.Flask":
                    for target in _targets(node):
                        if isinstance(target, ast.Name):
                            self.app_names.add(target.id)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions.setdefault(node.name, node)

    # -- helpers ------------------------------------------------------------

    def qualname(self, node: ast.AST | None) -> str | None:
        """``requests.post``, ``flask.Flask``...: a name with its import."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(self.imports.get(node.id, node.id))
        return ".".join(reversed(parts))

    def add(self, check_id: str, node: ast.AST, message: str) -> None:
        self.result.findings.append(
            Finding.of(
                check_id,
                message,
                file=self.filename,
                line=getattr(node, "lineno", None),
            )
        )

    def is_app(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id in self.app_names

    def handlers(self) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
        """Request handlers and the module's functions they call."""
        found: dict[int, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if any(_is_route(d) for d in node.decorator_list):
                    found[id(node)] = node
            elif isinstance(node, ast.ClassDef) and any(
                (self.qualname(b) or "").endswith("View") for b in node.bases
            ):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        if item.name in _VIEW_METHODS:
                            found[id(item)] = item
        todo = list(found.values())
        while todo:
            function = todo.pop()
            for node in ast.walk(function):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    callee = self.functions.get(node.func.id)
                    if callee is not None and id(callee) not in found:
                        found[id(callee)] = callee
                        todo.append(callee)
        return sorted(found.values(), key=lambda f: f.lineno)

    # -- the checks ---------------------------------------------------------

    def run(self) -> StaticResult:
        self.facts()
        self.under_main()
        self.run_at_import()
        self.secrets()
        handlers = self.handlers()
        self.module_state(handlers)
        self.sqlalchemy()
        self.own_urls(handlers)
        self.breakpoints()
        self.errors_with_200(handlers)
        return self.result

    def facts(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call):
                name = self.qualname(node.func) or ""
                if name == "flask.Flask":
                    self.result.flask_lines.append((self.filename, node.lineno))
                elif name.endswith("DebuggedApplication"):
                    self.result.debugger_lines.append((self.filename, node.lineno))
        used = set(self.imports.values())
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Attribute):
                used.add(self.qualname(node) or "")
        self.result.uses_session = any(
            name == user or name.startswith(user + ".")
            for name in used
            for user in _SESSION_USERS
        )

    def _setup_target(self, target: ast.expr) -> tuple[str, str] | None:
        """``(key, description)`` when assigning ``target`` sets up the app."""
        if isinstance(target, ast.Attribute) and self.is_app(target.value):
            if target.attr in _SETUP_ATTRIBUTES:
                key = "SECRET_KEY" if target.attr == "secret_key" else target.attr
                return key, f"{_short(target)} is set"
        if isinstance(target, ast.Subscript):
            config = target.value
            if (
                isinstance(config, ast.Attribute)
                and config.attr == "config"
                and self.is_app(config.value)
            ):
                config_key = _str_key(target.slice)
                if config_key in _DEV_ONLY_KEYS:
                    return None
                return config_key or "config", f"{_short(target)} is set"
        return None

    def _setup_call(self, call: ast.Call) -> str | None:
        func = call.func
        if isinstance(func, ast.Attribute):
            if self.is_app(func.value) and func.attr in _SETUP_METHODS:
                return f"{_short(call)} is called"
            if (
                func.attr in _CONFIG_METHODS
                and isinstance(func.value, ast.Attribute)
                and func.value.attr == "config"
                and self.is_app(func.value.value)
            ):
                return f"{_short(call)} is called"
            if func.attr == "init_app" and any(self.is_app(a) for a in call.args):
                return f"the extension is set up ({_short(call)})"
        name = self.qualname(func) or ""
        last = name.rsplit(".", 1)[-1]
        if (
            last[:1].isupper()
            and call.args
            and self.is_app(call.args[0])
            and not last.endswith("DebuggedApplication")
        ):
            return f"the extension is set up ({_short(call)})"
        return None

    def under_main(self) -> None:
        guards = [s for s in self.tree.body if _is_main_guard(s)]
        outside: set[str] = set()
        for statement in self.tree.body:
            if _is_main_guard(statement):
                continue
            for node in ast.walk(statement):
                if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                    for target in _targets(node):
                        found = self._setup_target(target)
                        if found:
                            outside.add(found[0])
        for guard in guards:
            for node in _walk_shallow(guard):
                message = None
                secret = False
                if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                    for target in _targets(node):
                        found = self._setup_target(target)
                        if found and found[0] not in outside:
                            message = found[1]
                            secret = found[0] == "SECRET_KEY"
                elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                    message = self._setup_call(node.value)
                if message is None:
                    continue
                if secret:
                    effect = (
                        "has no secret key: every request that writes the "
                        "session fails with a 500"
                    )
                else:
                    effect = "runs without it"
                self.add(
                    "DIAG011",
                    node,
                    f"{message} only under 'if __name__ == \"__main__\":'; "
                    f"gunicorn imports the module and never runs that block, so "
                    f"the served app {effect}",
                )

    def run_at_import(self) -> None:
        for statement in self.tree.body:
            if _is_main_guard(statement):
                continue
            for node in _walk_shallow(statement):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "run"
                    and self.is_app(node.func.value)
                ):
                    self.add(
                        "DIAG012",
                        node,
                        f"{_short(node)} runs when the module is imported: under "
                        "gunicorn each worker starts the development server "
                        "instead of serving",
                    )

    def _secret_values(self) -> Iterator[tuple[ast.AST, ast.expr]]:
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value:
                for target in _targets(node):
                    if (
                        isinstance(target, ast.Attribute)
                        and target.attr == "secret_key"
                    ):
                        yield node, node.value
                    elif (
                        isinstance(target, ast.Subscript)
                        and _str_key(target.slice) == "SECRET_KEY"
                    ):
                        yield node, node.value
                    elif (
                        isinstance(target, ast.Name)
                        and target.id == "SECRET_KEY"
                        and node in self.tree.body
                    ):
                        yield node, node.value
            elif isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "SECRET_KEY":
                        yield node, keyword.value
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if key is not None and _str_key(key) == "SECRET_KEY":
                        yield node, value

    def secrets(self) -> None:
        for node, value in self._secret_values():
            calls = [n for n in ast.walk(value) if isinstance(n, ast.Call)]
            if any(self.qualname(c.func) in _RANDOM for c in calls):
                self.add(
                    "DIAG015",
                    node,
                    f"the secret key is generated at import ({_short(value)}): "
                    "each worker process signs sessions with its own key, so a "
                    "session made by one worker is rejected by the others",
                )
                continue
            literal = None
            if isinstance(value, ast.Constant) and isinstance(
                value.value, (str, bytes)
            ):
                literal = value if value.value else None
            else:
                for call in calls:
                    name = self.qualname(call.func) or ""
                    if name in ("os.environ.get", "os.getenv"):
                        default = call.args[1] if len(call.args) > 1 else None
                        for keyword in call.keywords:
                            if keyword.arg == "default":
                                default = keyword.value
                        if isinstance(default, ast.Constant) and default.value:
                            literal = default
            if literal is not None:
                self.add(
                    "DIAG014",
                    node,
                    "the secret key is written in the source"
                    + (
                        " (as the default when the variable is missing)"
                        if literal is not value
                        else ""
                    )
                    + ": anyone with the code can sign sessions",
                )

    def module_state(
        self, handlers: list[ast.FunctionDef | ast.AsyncFunctionDef]
    ) -> None:
        containers: dict[str, ast.stmt] = {}
        counters: dict[str, ast.stmt] = {}
        for statement in self.tree.body:
            if not isinstance(statement, (ast.Assign, ast.AnnAssign)):
                continue
            value = statement.value
            if value is None:
                continue
            for target in _targets(statement):
                if not isinstance(target, ast.Name) or target.id.startswith("__"):
                    continue
                if _is_container(value, self.qualname):
                    containers[target.id] = statement
                elif isinstance(value, ast.Constant) and type(value.value) in (
                    int,
                    float,
                ):
                    counters[target.id] = statement
        mutations: dict[str, list[tuple[str, int]]] = {}
        for function in handlers:
            declared_global: set[str] = set()
            local: set[str] = {a.arg for a in function.args.args}
            for node in ast.walk(function):
                if isinstance(node, ast.Global):
                    declared_global.update(node.names)
            for node in ast.walk(function):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    local.add(node.id)
            local -= declared_global
            for node in ast.walk(function):
                name = _mutated_name(node)
                if name in containers and name not in local:
                    mutations.setdefault(name, []).append((function.name, node.lineno))  # type: ignore[attr-defined]
                if isinstance(node, (ast.AugAssign, ast.Assign)) and name is None:
                    for target in _targets(node):
                        if (
                            isinstance(target, ast.Name)
                            and target.id in declared_global
                            and target.id in counters | containers
                        ):
                            mutations.setdefault(target.id, []).append(
                                (function.name, node.lineno)
                            )
        definitions = containers | counters
        for name, places in sorted(mutations.items()):
            where = ", ".join(
                f"{function} (line {line})" for function, line in sorted(set(places))
            )
            self.add(
                "DIAG016",
                definitions[name],
                f"module-level {name!r} is changed by request handlers: {where}. "
                "Each worker process has its own copy, so under several workers "
                "requests see different data",
            )

    def sqlalchemy(self) -> None:
        factories: set[str] = set()
        scoped: dict[str, ast.stmt] = {}
        for statement in self.tree.body:
            if not isinstance(statement, (ast.Assign, ast.AnnAssign)):
                continue
            value = statement.value
            if not isinstance(value, ast.Call):
                continue
            name = self.qualname(value.func) or ""
            for target in _targets(statement):
                if not isinstance(target, ast.Name):
                    continue
                if name.endswith("sessionmaker"):
                    factories.add(target.id)
                elif name.endswith("scoped_session"):
                    scoped[target.id] = statement
        for statement in self.tree.body:
            if not isinstance(statement, (ast.Assign, ast.AnnAssign)):
                continue
            value = statement.value
            if not isinstance(value, ast.Call):
                continue
            func = value.func
            name = self.qualname(func) or ""
            global_session = (
                isinstance(func, ast.Name) and func.id in factories
            ) or name in ("sqlalchemy.orm.Session", "sqlalchemy.orm.session.Session")
            if isinstance(func, ast.Call):  # sessionmaker(...)()
                global_session = (self.qualname(func.func) or "").endswith(
                    "sessionmaker"
                )
            if global_session:
                self.add(
                    "DIAG017",
                    statement,
                    f"{_short(statement)} makes one Session at import, shared by "
                    "every request and thread: its connection stays checked out "
                    "until the database drops it ('MySQL server has gone away')",
                )
        # Resolved across files in scan(): a remove() elsewhere counts.
        self.scoped = scoped
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call):
                continue
            if not (self.qualname(node.func) or "").endswith("create_engine"):
                continue
            url = _str_key(node.args[0]) if node.args else None
            keywords = {k.arg for k in node.keywords}
            if (
                url
                and url.startswith(("mysql", "mariadb"))
                and not keywords & {"pool_recycle", "pool_pre_ping"}
            ):
                self.add(
                    "DIAG019",
                    node,
                    "a MySQL engine without pool_recycle or pool_pre_ping: "
                    "connections idle longer than wait_timeout fail with 'MySQL "
                    "server has gone away'",
                )

    def removed_names(self) -> set[str]:
        names = set()
        for node in ast.walk(self.tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "remove"
                and isinstance(node.func.value, ast.Name)
            ):
                names.add(node.func.value.id)
        return names

    def _own_url(self, node: ast.AST, tainted: set[str]) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in tainted:
                return True
            if isinstance(sub, ast.Attribute) and sub.attr in _OWN_URL_ATTRIBUTES:
                if self.qualname(sub.value) == "flask.request":
                    return True
            if isinstance(sub, ast.Call) and self.qualname(sub.func) == "flask.url_for":
                for keyword in sub.keywords:
                    if (
                        keyword.arg == "_external"
                        and isinstance(keyword.value, ast.Constant)
                        and keyword.value.value
                    ):
                        return True
        return False

    def _http_call(self, call: ast.Call) -> ast.expr | None | bool:
        """The URL argument of an outbound HTTP call, ``False`` if not one."""
        name = self.qualname(call.func) or ""
        module, _, verb = name.rpartition(".")
        if name in ("urllib.request.urlopen", "urllib.request.Request"):
            pass
        elif not (module in _HTTP_MODULES and verb in _HTTP_VERBS):
            return False
        for keyword in call.keywords:
            if keyword.arg == "url":
                return keyword.value
        index = 1 if verb == "request" else 0
        return call.args[index] if len(call.args) > index else None

    def own_urls(self, handlers: list[ast.FunctionDef | ast.AsyncFunctionDef]) -> None:
        for function in handlers:
            tainted: set[str] = set()
            for _ in range(3):  # a = url_for(...); b = f"...{a}"; payload = {b}
                for node in ast.walk(function):
                    if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value:
                        if self._own_url(node.value, tainted):
                            for target in _targets(node):
                                if isinstance(target, ast.Name):
                                    tainted.add(target.id)
            for node in ast.walk(function):
                if not isinstance(node, ast.Call):
                    continue
                url = self._http_call(node)
                if url is False:
                    continue
                if isinstance(url, ast.expr) and self._own_url(url, tainted):
                    self.add(
                        "DIAG020",
                        node,
                        f"{function.name}() calls a URL of this app "
                        f"({_short(url, 40)}): on a server that serves one "
                        "request at a time the call waits for itself forever",
                    )
                    continue
                others = [a for a in node.args if a is not url] + [
                    k.value for k in node.keywords if k.value is not url
                ]
                if any(self._own_url(a, tainted) for a in others):
                    self.add(
                        "DIAG021",
                        node,
                        f"{function.name}() sends a URL of this app to another "
                        "service and waits for the answer: when that service "
                        "fetches the URL, this server must answer while it waits",
                    )

    def breakpoints(self) -> None:
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call):
                continue
            name = self.qualname(node.func) or ""
            module, _, function = name.rpartition(".")
            if name == "breakpoint" or (
                function == "set_trace" and module in _DEBUGGER_MODULES
            ):
                self.add(
                    "DIAG022",
                    node,
                    f"{_short(node)} is left in the code: under a server it "
                    "stops the worker until the worker timeout kills it (or, "
                    "with flask_diag, waits for a remote debugger when "
                    "FLASK_DIAG_PDB=on)",
                )

    def errors_with_200(
        self, handlers: list[ast.FunctionDef | ast.AsyncFunctionDef]
    ) -> None:
        routed = [
            h
            for h in handlers
            if any(_is_route(d, views_only=True) for d in h.decorator_list)
        ]
        for function in routed:
            for node in _walk_shallow(function):
                if not isinstance(node, ast.Return) or node.value is None:
                    continue
                value = node.value
                error = _error_body(value)
                if (
                    isinstance(value, ast.Call)
                    and self.qualname(value.func) == "flask.jsonify"
                ):
                    error = any(_error_body(a) for a in value.args) or any(
                        k.arg in ("error", "errors") for k in value.keywords
                    )
                if error:
                    self.add(
                        "DIAG023",
                        node,
                        f"{function.name}() answers an error body with status "
                        "200: clients and monitoring count it as a success",
                    )


def _error_body(node: ast.expr) -> bool:
    if isinstance(node, ast.Dict):
        return any(
            key is not None and _str_key(key) in ("error", "errors")
            for key in node.keys
        )
    return False


def _is_route(decorator: ast.expr, *, views_only: bool = False) -> bool:
    if isinstance(decorator, ast.Call):
        decorator = decorator.func
    if not isinstance(decorator, ast.Attribute):
        return False
    if views_only:
        return decorator.attr in ("route", "get", "post", "put", "patch", "delete")
    return decorator.attr in _ROUTE_DECORATORS


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return list(node.targets)
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        return [node.target]
    return []


def _call_func(node: ast.expr) -> ast.expr | None:
    return node.func if isinstance(node, ast.Call) else None


def _is_container(value: ast.expr, qualname: t.Callable[[ast.AST], str | None]) -> bool:
    if isinstance(
        value, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)
    ):
        return True
    if isinstance(value, ast.Call):
        name = qualname(value.func) or ""
        return name.rsplit(".", 1)[-1] in _CONTAINERS
    return False


def _mutated_name(node: ast.AST) -> str | None:
    """The module-level name a statement or call mutates in place, if any."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr in _MUTATORS and isinstance(node.func.value, ast.Name):
            return node.func.value.id
    targets: list[ast.expr] = []
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        targets = _targets(node)
    elif isinstance(node, ast.Delete):
        targets = list(node.targets)
    for target in targets:
        if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
            return target.value.id
        if isinstance(node, ast.AugAssign) and isinstance(target, ast.Name):
            return None  # rebinding: only with ``global``, handled apart
    return None


def scan_source(source: str, filename: str) -> StaticResult:
    """The checks of one file's source text (``filename`` is reported)."""
    return scan_sources([(source, filename)])


def scan_sources(sources: Iterable[tuple[str, str]]) -> StaticResult:
    """The checks of several files of one app, as ``(source, filename)``."""
    result = StaticResult()
    modules: list[_Module] = []
    for source, filename in sources:
        try:
            tree = ast.parse(source, filename)
        except SyntaxError:
            continue  # the import already succeeded: not the served code
        module = _Module(tree, filename)
        result.merge(module.run())
        modules.append(module)
    removed = set().union(*(m.removed_names() for m in modules)) if modules else set()
    for module in modules:
        for name, statement in module.scoped.items():
            if name not in removed:
                result.findings.append(
                    Finding.of(
                        "DIAG018",
                        f"scoped_session {name!r} is never removed: each thread "
                        "keeps its session (and its connection and transaction) "
                        "from one request to the next",
                        file=module.filename,
                        line=statement.lineno,
                    )
                )
    return result


def scan(files: Iterable[Path], display: t.Callable[[Path], str] = str) -> StaticResult:
    """The checks of the app's files; ``display`` names a file in findings."""
    sources = []
    for path in files:
        try:
            sources.append((path.read_text(encoding="utf-8"), display(path)))
        except (OSError, UnicodeDecodeError):
            continue
    return scan_sources(sources)
