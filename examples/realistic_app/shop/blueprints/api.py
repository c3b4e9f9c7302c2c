"""The JSON API: orders, and a call to the payment provider."""

from __future__ import annotations

import os

import requests
from flask import Blueprint
from flask import request
from flask import session
from flask.views import MethodView

from flask_diag import DiagHTTPError

from ..extensions import db
from ..models import Order
from ..models import Product
from ..reports import count_rows

PAYMENTS_URL = os.environ.get("PAYMENTS_URL", "https://payments.example.invalid")

bp = Blueprint("api", __name__)


class OrderAPI(MethodView):
    def get(self) -> dict[str, object]:
        user = session.get("user")
        orders = db.session.execute(db.select(Order).filter_by(user=user)).scalars()
        return {"orders": [o.id for o in orders]}

    def post(self) -> tuple[dict[str, object], int]:
        user = session.get("user")
        if user is None:
            raise DiagHTTPError(401, "login_required", "Log in first.")
        data = request.get_json(silent=True) or {}
        product = db.get_or_404(Product, int(data.get("product_id", 0)))
        order = Order(user=user, product_id=product.id)
        db.session.add(order)
        db.session.commit()
        return {"order": order.id}, 201


bp.add_url_rule("/orders", view_func=OrderAPI.as_view("orders"))


@bp.post("/orders/<int:order_id>/pay")
def pay(order_id: int) -> dict[str, object]:
    # An outbound call to another service, with nothing of this app's URLs.
    answer = requests.post(
        f"{PAYMENTS_URL}/charges",
        json={"order": order_id},
        timeout=10,
    )
    if answer.status_code >= 400:
        raise DiagHTTPError(502, "payment_failed", "The payment was refused.")
    return {"paid": True}


@bp.get("/stats")
def stats() -> dict[str, object]:
    return {"report_rows": count_rows()}
