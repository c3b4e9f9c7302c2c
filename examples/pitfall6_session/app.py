"""Pitfall 6: the database session that outlives its request.

The module-global ``session = SessionLocal()`` below is what the tutorial
code does: one ``Session`` shared by every request and every thread. It keeps
its connection checked out and its transaction open between requests; once
the database closes that idle connection (MySQL's ``wait_timeout``, 8 h by
default; PostgreSQL's ``idle_session_timeout``) every request fails::

    DATABASE_URL=postgresql+psycopg://user@127.0.0.1/shop \\
        gunicorn -k gthread --threads 4 -b 127.0.0.1:8000 app:app
    curl -s http://127.0.0.1:8000/cars         # works
    # ... the server's idle timeout passes ...
    curl -s http://127.0.0.1:8000/cars         # 500: OperationalError,
    # "terminating connection due to idle-session timeout", then
    # "Can't reconnect until invalid transaction is rolled back" for ever.

flask_diag (``diag.watch_engine(engine)``) names the problem at the end of
the very first request, long before the timeout: one ``teardown leak`` log
line per finding, pointing at ``module-global session 'app.session'``.

The other ``/leak/*`` views each leave one kind of resource behind; the
``/ok/*`` views are their clean versions, and :mod:`app_fixed` is this whole
app done right (``scoped_session``, ``remove()`` in ``teardown_appcontext``,
``pool_pre_ping``).

Routes: ``/cars`` (the global session), ``/leak/connection``,
``/leak/transaction``, ``/leak/pending``, ``/leak/scoped``, ``/leak/stream``
(checks a connection out while the body streams), ``/ok/connection``,
``/ok/transaction``, ``/ok/pending``, ``/ok/scoped``, ``/stream`` (a streamed
response that queries while it streams), ``/cleanup`` (closes what the
leaking views kept, so the pool does not run dry).
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


engine = create_engine(DATABASE_URL)
Base.metadata.create_all(engine)
SessionLocal = sessionmaker(bind=engine)

# The bug: one Session for the whole process.
session = SessionLocal()

# A scoped_session whose remove() is never called (/leak/scoped), and one
# that is removed at the end of every request (/ok/*).
forgotten = scoped_session(sessionmaker(bind=engine))
db_session = scoped_session(sessionmaker(bind=engine))

app = Flask(__name__)
diag = Diag(app)  # FLASK_DIAG=off runs the app without it
diag.watch_engine(engine)
diag.watch_session(forgotten)
diag.watch_session(db_session)

# What the leaking views keep (a real app loses them; here /cleanup can
# still close them).
_kept: list[t.Any] = []


@app.teardown_appcontext
def remove_db_session(exception: BaseException | None = None) -> None:
    db_session.remove()


@app.get("/")
def ready() -> str:
    return "ready"


@app.get("/cars")
def cars() -> dict[str, object]:
    count = session.execute(select(func.count()).select_from(Car)).scalar_one()
    return {"cars": count}


@app.get("/leak/connection")
def leak_connection() -> dict[str, object]:
    conn = engine.connect()  # never closed
    _kept.append(conn)
    return {"one": conn.execute(text("SELECT 1")).scalar_one()}


@app.get("/leak/transaction")
def leak_transaction() -> dict[str, object]:
    s = SessionLocal()
    s.add(Car(name="leaked"))
    s.flush()  # the INSERT runs in a transaction nobody commits
    _kept.append(s)
    return {"added": True}


@app.get("/leak/pending")
def leak_pending() -> dict[str, object]:
    s = SessionLocal()
    s.add(Car(name="never saved"))  # pending: no flush, no commit
    _kept.append(s)
    return {"added": False}


@app.get("/leak/scoped")
def leak_scoped() -> dict[str, object]:
    count = forgotten.execute(select(func.count()).select_from(Car)).scalar_one()
    forgotten.commit()  # committed, but the registry keeps the session
    return {"cars": count}


@app.get("/ok/connection")
def ok_connection() -> dict[str, object]:
    with engine.connect() as conn:
        return {"one": conn.execute(text("SELECT 1")).scalar_one()}


@app.get("/ok/transaction")
def ok_transaction() -> dict[str, object]:
    with SessionLocal() as s, s.begin():
        s.add(Car(name="saved"))
    return {"added": True}


@app.get("/ok/pending")
def ok_pending() -> dict[str, object]:
    db_session.add(Car(name="saved"))
    db_session.commit()
    return {"added": True}


@app.get("/ok/scoped")
def ok_scoped() -> dict[str, object]:
    count = db_session.execute(select(func.count()).select_from(Car)).scalar_one()
    return {"cars": count}


@app.get("/stream")
def stream() -> Response:
    def rows() -> t.Iterator[str]:
        # Queries while the body is sent: checked after the last chunk.
        for _ in range(3):
            yield f"{db_session.execute(text('SELECT 1')).scalar_one()}\n"

    return Response(stream_with_context(rows()), mimetype="text/plain")


@app.get("/leak/stream")
def leak_stream() -> Response:
    def rows() -> t.Iterator[str]:
        yield "first\n"
        conn = engine.connect()  # checked out while the body streams
        _kept.append(conn)
        yield f"{conn.execute(text('SELECT 1')).scalar_one()}\n"

    return Response(rows(), mimetype="text/plain")


@app.post("/cleanup")
def cleanup() -> dict[str, object]:
    closed = len(_kept)
    while _kept:
        _kept.pop().close()
    session.close()
    forgotten.remove()
    return {"closed": closed}


if __name__ == "__main__":
    app.run()
