"""Who may skip the Redis revocation check: only routes whose own query checks the session."""

from __future__ import annotations

from fastapi import FastAPI

from referloop.identity.deps import current_principal, session_unchecked_principal
from tests.route_deps import route_dependencies

# Each of these checks the caller's session in its own statement, and has a test that an ended
# session gets 401 there (tests/identity/test_login_sessions.py).
CHECK_THE_SESSION_IN_THEIR_QUERY = {"GET /v1/me"}


def test_only_listed_routes_leave_the_session_check_to_their_query(app: FastAPI) -> None:
    routes = route_dependencies(app)
    unchecked = {route for route, calls in routes.items() if session_unchecked_principal in calls}
    assert unchecked == CHECK_THE_SESSION_IN_THEIR_QUERY
    both = sorted(r for r in unchecked if current_principal in routes[r])
    assert both == [], f"routes that check the session twice: {both}"
