"""The request-size guard and the security headers every response gets."""

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse

# The page loads nothing from elsewhere; the browser enforces it.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
                           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class GuardMiddleware:
    """Refuses request bodies over ``max_body_bytes`` (413) or of unknown length (411)
    before they are read, and adds security headers (the CSP on HTML pages). Plain
    ASGI: ``@app.middleware("http")`` costs a task and a stream per request."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        refusal = None
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            refusal = 413, f"request body larger than {self.max_body_bytes} bytes"
        elif length is None and b"transfer-encoding" in headers:
            refusal = 411, "a request body needs a Content-Length header"
        if refusal is not None:
            return await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(scope, receive, self._with_headers(send))
        await self.app(scope, receive, self._with_headers(send))

    @staticmethod
    def _with_headers(send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                if headers.get("content-type", "").startswith("text/html"):
                    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            await send(message)

        return send_with_headers
