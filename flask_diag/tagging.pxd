# Compiled only (see setup.py and flask_diag/speedups.py): declarations that
# make the middleware and its per-request object extension types, their
# fields in C structs. The Python source, tagging.py, stays the one
# implementation.
cimport cython

from flask_diag.closing cimport close_iterable
from flask_diag.context cimport current_pid_str
from flask_diag.context cimport init_request_info
from flask_diag.context cimport RequestInfo
from flask_diag.sentry cimport is_active as sentry_is_active

# The context variables, read on every request: C globals, not module
# dictionary lookups.
cdef object _REQUEST_ID, _PID, _THREAD, _METHOD, _PATH, _TRACE_ID, _perf_counter
cdef object _set_var, _reset_var, _get_var
cdef tuple _TWO_DIGITS


cdef class RequestTagging:
    # As a class of the Python source: attributes of one's own, weak
    # references (made once per app, never per request).
    cdef dict __dict__
    cdef object __weakref__
    cdef public object app
    cdef public object settings
    cdef public object _header_name
    cdef public object _header_key
    cdef public object _lower_name
    cdef public set _other_names
    cdef public bint _worker_headers
    cdef public bint _server_timing
    cdef public bint _trust
    cdef public bint _access_log

    @cython.locals(response=_TaggedResponse)
    cdef _serve(self, environ, start_response)


cdef class _TaggedResponse(RequestInfo):
    # As a class of the Python source: it is environ["flask_diag.request"],
    # where an app may keep attributes of its own or a weak reference. (No
    # cpdef method below: with a __dict__, each call would look for an
    # override.)
    cdef dict __dict__
    cdef object __weakref__
    cdef public RequestTagging owner
    cdef public object server_start_response
    cdef public object environ
    cdef public object status
    cdef public object app_iter
    cdef public object request_id_token
    cdef public object pid_token
    cdef public object thread_token
    cdef public object method_token
    cdef public object path_token
    cdef public object trace_token
    cdef public object sentry_scope
    cdef public bint ended

    @cython.locals(owner=RequestTagging)
    cdef end(self)
