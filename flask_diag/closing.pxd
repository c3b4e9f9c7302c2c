# Compiled only (see setup.py and flask_diag/speedups.py): the functions the
# other compiled modules call on every request, callable from them in C. The
# Python source, closing.py, stays the one implementation.

cpdef close_iterable(app_iter)


cpdef inert_response(app_iter)
