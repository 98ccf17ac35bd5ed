"""The HTTP layer: FastAPI app, routes, error mapping, middleware, auth and the uvicorn runner.

Nothing outside this package (and the HTTP client) imports FastAPI or starlette or names an HTTP status.
"""
