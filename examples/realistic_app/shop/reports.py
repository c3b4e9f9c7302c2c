"""Reports read a separate database through a plain SQLAlchemy scoped_session.

The session registry is per thread and removed at the end of every app
context (registered in the factory), so no Session outlives its request.
"""

from __future__ import annotations

import os

from sqlalchemy import create_engine
from sqlalchemy import text
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

engine = create_engine(
    os.environ.get("REPORTS_DATABASE_URL", "sqlite://"),
    pool_pre_ping=True,
    pool_recycle=3600,
)
ReportSession = scoped_session(sessionmaker(bind=engine))


def remove_report_session(exc: BaseException | None = None) -> None:
    ReportSession.remove()


def count_rows() -> int:
    return int(ReportSession.execute(text("SELECT 1")).scalar_one())
