"""Pitfall 6, fixed: a ``scoped_session``, ``remove()`` at the end of every
request, and ``pool_pre_ping`` so a connection the database closed while it
sat in the pool is replaced before use::

    DATABASE_URL=postgresql+psycopg://user@127.0.0.1/shop \\
        gunicorn -k gthread --threads 4 -b 127.0.0.1:8000 app_fixed:app

Same routes as :mod:`app`; every view releases what it takes, so flask_diag
reports nothing, and ``/cars`` still works after the database's idle timeout.
"""

from __future__ import annotations

import os
import typing as t

from flask import Flask
from flask import Response
from flask import stream_with_context
from sqlalchemy import create_engine
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import String
from sqlalchemy import text
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

import flask_diag.logging
from flask_diag import Diag

flask_diag.logging.configure()  # JSON lines on stderr

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///pitfall6.db")


class Base(DeclarativeBase):
    pass


class Car(Base):
    __tablename__ = "cars"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


# pool_pre_ping: a pooled connection is tested at checkout and replaced if
# the server closed it (pool_recycle=<seconds below the server's idle
# timeout> is the other way).
engine = create_engine(DATABASE_URL, pool_pre_ping=True)
Base.metadata.create_all(engine)
SessionLocal = sessionmaker(bind=engine)
# One session per thread, created on first use...
db_session = scoped_session(SessionLocal)

app = Flask(__name__)
diag = Diag(app)
diag.watch_engine(engine)
diag.watch_session(db_session)


# ... and removed (closed: connection back to the pool, transaction rolled
# back) when each request ends, whatever happened in it.
@app.teardown_appcontext
def remove_db_session(exception: BaseException | None = None) -> None:
    db_session.remove()


@app.get("/")
def ready() -> str:
    return "ready"


@app.get("/cars")
def cars() -> dict[str, object]:
    count = db_session.execute(select(func.count()).select_from(Car)).scalar_one()
    return {"cars": count}


@app.get("/leak/connection")
def leak_connection() -> dict[str, object]:
    with engine.connect() as conn:
        return {"one": conn.execute(text("SELECT 1")).scalar_one()}


@app.get("/leak/transaction")
def leak_transaction() -> dict[str, object]:
    with SessionLocal() as s, s.begin():
        s.add(Car(name="saved"))
    return {"added": True}


@app.get("/leak/pending")
def leak_pending() -> dict[str, object]:
    db_session.add(Car(name="saved"))
    db_session.commit()
    return {"added": True}


@app.get("/leak/scoped")
def leak_scoped() -> dict[str, object]:
    count = db_session.execute(select(func.count()).select_from(Car)).scalar_one()
    db_session.commit()
    return {"cars": count}


@app.get("/stream")
def stream() -> Response:
    def rows() -> t.Iterator[str]:
        for _ in range(3):
            yield f"{db_session.execute(text('SELECT 1')).scalar_one()}\n"

    return Response(stream_with_context(rows()), mimetype="text/plain")


@app.get("/leak/stream")
def leak_stream() -> Response:
    def rows() -> t.Iterator[str]:
        with engine.connect() as conn:
            yield f"{conn.execute(text('SELECT 1')).scalar_one()}\n"
        yield "done\n"

    return Response(rows(), mimetype="text/plain")


@app.post("/cleanup")
def cleanup() -> dict[str, object]:
    return {"closed": 0}
