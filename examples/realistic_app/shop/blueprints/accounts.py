"""Logging in and out: the signed session cookie."""

from __future__ import annotations

from flask import Blueprint
from flask import flash
from flask import request
from flask import session

from flask_diag import DiagHTTPError

bp = Blueprint("accounts", __name__)


@bp.post("/login")
def login() -> tuple[dict[str, object], int]:
    name = (request.get_json(silent=True) or {}).get("user")
    if not isinstance(name, str) or not name:
        raise DiagHTTPError(422, "invalid_login", "A 'user' string is required.")
    session["user"] = name
    flash("welcome")
    return {"user": name}, 200


@bp.post("/logout")
def logout() -> dict[str, object]:
    session.pop("user", None)
    return {"user": None}


@bp.get("/me")
def me() -> dict[str, object]:
    return {"user": session.get("user")}
