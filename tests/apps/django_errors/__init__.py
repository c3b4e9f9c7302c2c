"""A Django project for the error envelope tests: in-process
(``tests/test_errors.py``) and under gunicorn (``tests/test_errors_servers.py``,
run from ``tests/apps``)."""
