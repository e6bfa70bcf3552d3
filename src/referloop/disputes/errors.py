from referloop.core.errors import AppError, Conflict


class DisputeClosed(Conflict):
    code = "dispute_closed"
    title = "Dispute already resolved"


class SubjectNotFound(AppError):
    status_code = 404
    code = "dispute_subject_not_found"
    title = "Subject not found"


class TooManyOpenDisputes(Conflict):
    code = "too_many_open_disputes"
    title = "Too many open disputes"


class DisputeThreadFull(Conflict):
    code = "dispute_thread_full"
    title = "Too many messages in this dispute"
