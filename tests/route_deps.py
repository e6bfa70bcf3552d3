"""Which dependencies each route runs: for tests that hold routes to a rule (read session, auth)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts


def _dependency_calls(dependant: Dependant) -> set[Callable[..., Any]]:
    calls: set[Callable[..., Any]] = set()
    stack = [dependant]
    while stack:
        d = stack.pop()
        if d.call is not None:
            calls.add(d.call)
        stack.extend(d.dependencies)
    return calls


def route_dependencies(app: FastAPI, method: str | None = None) -> dict[str, set[Callable[..., Any]]]:
    """ "METHOD path" of every API route (included routers flattened), or only the paths of `method`'s
    routes when it is given -> every dependency the route runs."""
    routes: dict[str, set[Callable[..., Any]]] = {}
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute):
            continue
        assert route.path is not None
        for m in sorted(route.methods or ()):
            if method is None:
                routes[f"{m} {route.path}"] = _dependency_calls(route.dependant)
            elif m == method:
                routes[route.path] = _dependency_calls(route.dependant)
    return routes
