# Compiled only (see setup.py and flask_diag/speedups.py): the check made on
# every request, callable from the other compiled modules in C, without a
# module attribute lookup and a Python call. The Python source, sentry.py,
# stays the one implementation.

cpdef is_active()
