"""Pitfall 3: debugging the deployed app with werkzeug's debugger.

A small shop app whose ``/orders/<id>/total`` view fails for one order
(``/orders/42/total``: a ``TypeError`` in the loop). To see the failing
frame's variables on the staging server, the team writes the classic debug
entry point, ``wsgi_exposed.py`` (the pitfall), and runs it. The safe way is
``app_fixed.py`` (``Diag(app)``, switched on by one variable) or
``../wsgi-debug.py`` (``wrap()``); see README.md.
"""

from __future__ import annotations

from flask import Flask

ORDERS = {
    41: {"items": [("coffee", 2, 3.5), ("cake", 1, 4.0)]},
    42: {"items": [("coffee", 1, 3.5), ("voucher", 1, None)]},  # the bad one
}

app = Flask(__name__)


@app.get("/")
def index() -> dict[str, object]:
    return {"orders": sorted(ORDERS)}


@app.get("/orders/<int:order_id>/total")
def order_total(order_id: int) -> dict[str, object]:
    order = ORDERS[order_id]
    total = 0.0
    for _name, quantity, price in order["items"]:
        total += quantity * price  # TypeError for the voucher: price is None
    return {"order": order_id, "total": total}
