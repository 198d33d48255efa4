"""Clinician review of prediction runs (``medres review``).

:class:`ReviewStore` holds loaded ``medres predict`` runs, one case per scan, the
reviewers' decisions and an append-only audit log (SQLite by default, any SQLAlchemy
URL); :mod:`medres.review.users` keeps the reviewers' salted password hashes. The
Streamlit app (``app/``, started by :mod:`medres.review.serve`) draws with
:mod:`medres.review.render`, words its badges and dashboard with
:mod:`medres.review.summary`, and shares :mod:`medres.review.ui` between its pages.
"""

from medres.review.schema import DECISIONS
from medres.review.store import LoadResult, ReviewStore
from medres.review.users import add_user, default_users_path, verify

__all__ = ["DECISIONS", "LoadResult", "ReviewStore", "add_user", "default_users_path", "verify"]
