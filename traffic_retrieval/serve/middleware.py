"""What every request passes before a route: the Host allow-list, the request-body
guard, and the security headers every response gets."""

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse

# The page loads nothing from elsewhere; the browser enforces it.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
                           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# An image opened on its own (a gallery file, a thumbnail) may run nothing, load nothing, and is never
# read as anything but an image, whatever its bytes hold.
IMAGE_CONTENT_SECURITY_POLICY = "default-src 'none'; sandbox"
CLOSE = {"Connection": "close"}  # the rest of a refused body is never read: the connection cannot carry another request
_HOST_ALLOWED = "traffic_retrieval.host_allowed"


class BodyTooLarge(HTTPException):
    """More body bytes arrived than allowed (raised from ``receive``; FastAPI answers it as any HTTPException)."""

    def __init__(self, max_body_bytes: int):
        super().__init__(413, f"request body larger than {max_body_bytes} bytes", headers=CLOSE)


class GuardMiddleware:
    """Refuses a request body over ``max_body_bytes`` (413) by its Content-Length before
    it is read, and by the bytes actually received while it is read; refuses any
    ``Transfer-Encoding`` (h11 frames a body by it, ignoring Content-Length, so a
    request with both would carry a body of any size past a check of the header);
    adds security headers (a CSP on HTML pages, a sandbox CSP on images). Plain ASGI:
    ``@app.middleware("http")`` costs a task and a stream per request."""

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
        elif b"transfer-encoding" in headers and length is not None:
            refusal = 400, "a request with both Content-Length and Transfer-Encoding is refused (send the body with Content-Length only)"
        elif b"transfer-encoding" in headers:
            refusal = 411, "a request body needs a Content-Length header (Transfer-Encoding is not accepted)"
        send = self._with_headers(send)
        if refusal is not None:
            return await JSONResponse({"detail": refusal[1]}, status_code=refusal[0], headers=CLOSE)(scope, receive, send)
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:  # read outside a route (FastAPI answers the ones inside)
            if started:
                raise
            await JSONResponse({"detail": exc.detail}, status_code=413, headers=CLOSE)(scope, receive, send)

    @staticmethod
    def _with_headers(send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                content_type = headers.get("content-type", "")
                if content_type.startswith("text/html"):
                    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
                elif content_type.startswith("image/"):
                    headers["Content-Security-Policy"] = IMAGE_CONTENT_SECURITY_POLICY
            await send(message)

        return send_with_headers


async def _mark_allowed(scope, receive, send):
    scope[_HOST_ALLOWED] = True


async def _discard(message):
    pass


class HostAllowList:
    """Answers only requests whose Host header names this server (``allowed_hosts``);
    others get a 400 with a JSON reason. The decision is Starlette's
    ``TrustedHostMiddleware`` (ports ignored, ``*.name`` patterns); only its plain-text
    refusal is replaced. A page from elsewhere that rebinds its name to 127.0.0.1 (DNS
    rebinding) sends its own name, so it cannot read the service from a user's browser."""

    def __init__(self, app, allowed_hosts: list[str]):
        self.app = app
        self.allowed_hosts = list(allowed_hosts)
        self._check = TrustedHostMiddleware(_mark_allowed, allowed_hosts=self.allowed_hosts, www_redirect=False)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            await self._check(scope, receive, _discard)
            if not scope.pop(_HOST_ALLOWED, False):
                host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
                shown = repr(host[:60] + ("..." if len(host) > 60 else "")) if host else "(none)"
                detail = f"Host {shown} is not allowed here (start serve with --allowed-host NAME to accept another name)"
                return await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)
        await self.app(scope, receive, send)
