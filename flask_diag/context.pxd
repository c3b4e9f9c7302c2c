# Compiled only (see setup.py and flask_diag/speedups.py): declarations that
# make RequestInfo an extension type with its fields in a C struct. The Python
# source, context.py, stays the one implementation; its __slots__ are these.


cdef class RequestInfo:
    cdef public object request_id
    cdef public object trace_id
    cdef public object pid
    cdef public object thread
    cdef public object method
    cdef public object path
    cdef public object started


# Read on every request: C globals (dictionary lookups without a method call).
cdef dict _safe_names, _active_threads
cdef object _get_ident
cdef object _id_batch


cpdef thread_name()


cpdef new_request_id()


cpdef current_pid_str()


cpdef init_request_info(RequestInfo info, environ, header_key, trust_incoming)
