"""Browsing the catalog."""

from __future__ import annotations

from flask import Blueprint

from ..extensions import db
from ..models import Product

bp = Blueprint("catalog", __name__)


@bp.get("/")
def index() -> dict[str, object]:
    products = db.session.execute(db.select(Product)).scalars().all()
    return {"products": [{"id": p.id, "name": p.name} for p in products]}


@bp.get("/products/<int:product_id>")
def product(product_id: int) -> dict[str, object]:
    found = db.get_or_404(Product, product_id)
    return {"id": found.id, "name": found.name, "price_cents": found.price_cents}
