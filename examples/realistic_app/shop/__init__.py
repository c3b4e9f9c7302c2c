"""A shop: an app factory, three blueprints, Flask-SQLAlchemy and flask_diag.

Everything the deployment needs is set up in :func:`create_app`, which
gunicorn calls (``gunicorn 'shop:create_app()'``): nothing hides under
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import os

from flask import Flask

from .extensions import db
from .extensions import diag
from .reports import remove_report_session


def create_app(config: dict[str, object] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_object("shop.settings")
    app.config["SECRET_KEY"] = os.environ["SECRET_KEY"]
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get(
        "DATABASE_URL", "sqlite:///:memory:"
    )
    if config:
        app.config.update(config)

    db.init_app(app)
    diag.init_app(app)
    app.teardown_appcontext(remove_report_session)

    from .blueprints.accounts import bp as accounts
    from .blueprints.api import bp as api
    from .blueprints.catalog import bp as catalog

    app.register_blueprint(catalog)
    app.register_blueprint(accounts, url_prefix="/accounts")
    app.register_blueprint(api, url_prefix="/api")

    with app.app_context():
        db.create_all()
    return app
