"""The core knows nothing of HTTP: only vlreward.service.http may (the HTTP client is vlreward.client)."""

from __future__ import annotations

import ast
from pathlib import Path

from vlreward.service.errors import ErrorKind
from vlreward.service.http.errors import STATUS

SERVICE = Path(__file__).resolve().parents[2] / "service"
HTTP_ONLY_MODULES = ("fastapi", "starlette", "uvicorn")
HTTP_AWARE = {SERVICE / "http"}


def core_modules() -> list[Path]:
    return [
        path
        for path in sorted(SERVICE.rglob("*.py"))
        if not any(path == aware or aware in path.parents for aware in HTTP_AWARE)
    ]


def test_no_core_module_imports_the_web_framework():
    offenders = []
    for path in core_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in HTTP_ONLY_MODULES]
    assert offenders == []


def test_no_core_module_names_an_http_status():
    statuses = set(STATUS.values())
    offenders = []
    for path in core_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value in statuses:
                offenders.append(f"{path.relative_to(SERVICE)}:{node.lineno}: {node.value}")
            if isinstance(node, ast.keyword) and node.arg in ("status", "status_code"):
                offenders.append(f"{path.relative_to(SERVICE)}:{node.lineno}: {node.arg}=")
    assert offenders == []


def test_every_error_kind_has_a_status():
    assert set(STATUS) == set(ErrorKind)
    assert all(400 <= status < 600 for status in STATUS.values())
