# Compiled only (see setup.py and flask_diag/speedups.py): declarations that
# make the envelope and its per-request object extension types, their hot
# fields in C structs. The Python source, errors.py, stays the one
# implementation.
cimport cython

from flask_diag.closing cimport close_iterable
from flask_diag.closing cimport inert_response


cdef class ErrorEnvelope:
    # The other attributes (and functools.cached_property) live here; weak
    # references work as for a class of the Python source.
    cdef dict __dict__
    cdef object __weakref__
    cdef public object app
    cdef public bint _off

    @cython.locals(response=_GuardedResponse)
    cdef _serve(self, environ, start_response)


cdef class _GuardedResponse:
    # As a class of the Python source (it is the app's start_response).
    cdef dict __dict__
    cdef object __weakref__
    cdef public ErrorEnvelope owner
    cdef public object environ
    cdef public object server_start_response
    cdef public object app_iter
    cdef public object status
    cdef public object held
    cdef public object written
    cdef public object server_write
    cdef public bint sent
