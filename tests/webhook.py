"""A local HTTPS webhook receiver standing in for Slack incoming webhooks and Microsoft
Teams workflow webhooks, answering as they do:

- Slack (https://api.slack.com/messaging/webhooks and the Block Kit reference): 200 with
  the body ``ok``; 400 ``invalid_payload`` for a body that is not a JSON object, 400
  ``no_text`` without ``text`` or ``blocks``, 400 ``invalid_blocks`` for blocks breaking
  Block Kit's limits (50 blocks; header: plain_text up to 150 characters; section: text up
  to 3000, at most 10 fields of up to 2000; context: 1 to 10 elements; text objects
  ``plain_text`` or ``mrkdwn``); 429 with ``Retry-After`` when rate limited.
- Teams workflows ("When a Teams webhook request is received"): 202 Accepted with an
  empty body; the body must be a message whose attachments are Adaptive Cards
  (``application/vnd.microsoft.card.adaptive``, ``type`` AdaptiveCard, version up to 1.5
  as Teams renders them), else 400.

Paths are ``/slack/<token>`` and ``/teams/<token>``: the token plays the secret part of a
real webhook URL. Scripted faults answer the next requests instead (and those requests are
not counted as delivered): ``(status, headers, body)`` or ``("stall", seconds)``, in
``faults`` (the next requests) or ``fail_requests`` (the n-th request of a kind).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests import loopback
from tests.dovecot import make_cert

TOKEN = "T0000/B0000/s3cretW3bhookT0ken"
SLACK_BLOCK_TYPES = {"header", "section", "divider", "context", "actions", "image",
                     "rich_text", "input", "file", "video"}
ADAPTIVE_ELEMENTS = {"TextBlock", "RichTextBlock", "FactSet", "Container", "ColumnSet",
                     "Image", "ImageSet", "ActionSet", "Table"}


def slack_problem(payload: Any) -> str | None:
    """The error string Slack answers for ``payload``, or None when it is accepted."""
    if not isinstance(payload, dict):
        return "invalid_payload"
    blocks = payload.get("blocks")
    if not payload.get("text") and not blocks:
        return "no_text"
    if blocks is None:
        return None
    if not isinstance(blocks, list) or not 0 < len(blocks) <= 50:
        return "invalid_blocks"
    for b in blocks:
        if not isinstance(b, dict) or b.get("type") not in SLACK_BLOCK_TYPES:
            return "invalid_blocks"
        kind = b["type"]
        if kind == "header" and not _text_object(b.get("text"), 150, plain_only=True):
            return "invalid_blocks"
        if kind == "section":
            text, fields = b.get("text"), b.get("fields")
            if text is None and fields is None:
                return "invalid_blocks"
            if text is not None and not _text_object(text, 3000):
                return "invalid_blocks"
            if fields is not None and (not isinstance(fields, list) or not 0 < len(fields) <= 10
                                       or not all(_text_object(f, 2000) for f in fields)):
                return "invalid_blocks"
        if kind == "context":
            elements = b.get("elements")
            if not isinstance(elements, list) or not 0 < len(elements) <= 10 or not all(
                    _text_object(e, 3000) for e in elements):
                return "invalid_blocks"
    return None


def _text_object(obj: Any, limit: int, plain_only: bool = False) -> bool:
    kinds = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    return (isinstance(obj, dict) and obj.get("type") in kinds
            and isinstance(obj.get("text"), str) and 0 < len(obj["text"]) <= limit
            and set(obj) <= {"type", "text", "emoji", "verbatim"})


def teams_problem(payload: Any) -> str | None:
    if not isinstance(payload, dict) or payload.get("type") != "message":
        return "body must be a message"
    attachments = payload.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return "attachments missing"
    for a in attachments:
        if a.get("contentType") != "application/vnd.microsoft.card.adaptive":
            return "attachment is not an Adaptive Card"
        card = a.get("content")
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            return "content is not an AdaptiveCard"
        version = str(card.get("version", ""))
        if version not in ("1.0", "1.1", "1.2", "1.3", "1.4", "1.5"):
            return f"unsupported card version {version!r}"
        problem = _elements(card.get("body"))
        if problem:
            return problem
    return None


def _elements(items: Any) -> str | None:
    if not isinstance(items, list):
        return "body/items must be a list"
    for e in items:
        kind = e.get("type") if isinstance(e, dict) else None
        if kind not in ADAPTIVE_ELEMENTS:
            return f"unknown element {kind!r}"
        if kind == "TextBlock" and not isinstance(e.get("text"), str):
            return "TextBlock without text"
        if kind == "RichTextBlock":
            inlines = e.get("inlines")
            if not isinstance(inlines, list) or not all(
                    isinstance(i, dict) and i.get("type") == "TextRun"
                    and isinstance(i.get("text"), str) for i in inlines):
                return "RichTextBlock inlines must be TextRuns"
        if kind == "Container":
            problem = _elements(e.get("items"))
            if problem:
                return problem
    return None


class WebhookServer:
    def __init__(self, root: Path) -> None:
        self.cert = make_cert(root / "hook-tls")
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.attempts: list[str] = []
        self.faults: dict[str, list[tuple[Any, ...]]] = {"slack": [], "teams": []}
        # by the number of the request to that kind (1 = its first): a fault for just those
        self.fail_requests: dict[str, dict[int, tuple[Any, ...]]] = {"slack": {}, "teams": {}}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                kind, _, token = self.path.strip("/").partition("/")
                if kind not in ("slack", "teams") or token != TOKEN:
                    # Slack says no_service for a webhook URL that does not exist
                    return self._answer(404, {}, b"no_service")
                with server.lock:
                    server.attempts.append(kind)
                    fault = server.fail_requests[kind].get(server.attempts.count(kind))
                    if fault is None and server.faults[kind]:
                        fault = server.faults[kind].pop(0)
                if fault is not None and fault[0] == "stall":
                    time.sleep(fault[1])
                    return self._answer(200, {}, b"ok")
                if fault is not None:
                    return self._answer(*fault)
                if not self.headers.get("Content-Type", "").startswith("application/json"):
                    return self._answer(400, {}, b"invalid_payload")
                try:
                    payload = json.loads(body)
                except ValueError:
                    return self._answer(400, {}, b"invalid_payload")
                if kind == "slack":
                    problem = slack_problem(payload)
                    if problem:
                        return self._answer(400, {}, problem.encode())
                    server._record(kind, payload)
                    return self._answer(200, {"Content-Type": "text/html"}, b"ok")
                problem = teams_problem(payload)
                if problem:
                    return self._answer(400, {"Content-Type": "application/json"}, json.dumps(
                        {"error": {"code": "InvalidRequestContent", "message": problem}}
                    ).encode())
                server._record(kind, payload)
                return self._answer(202, {}, b"")

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (a stalled answer): nothing to do
                    pass

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.cert.with_name("key.pem"))
        self.httpd = loopback.listen(ThreadingHTTPServer, Handler, tls=ctx)
        self.port = loopback.port(self.httpd)

    def _record(self, kind: str, payload: dict[str, Any]) -> None:
        with self.lock:
            self.received.append((kind, payload))

    def url(self, kind: str) -> str:
        return f"https://localhost:{self.port}/{kind}/{TOKEN}"

    def got(self, kind: str) -> list[dict[str, Any]]:
        return [p for k, p in self.received if k == kind]

    def __enter__(self) -> WebhookServer:
        loopback.serve(self.httpd)
        return self

    def __exit__(self, *exc: object) -> None:
        loopback.stop(self.httpd)
