"""Send a transaction Bundle to a FHIR R4 server: :func:`post_transaction` and :class:`FhirWriteError`.

>>> post_transaction({"resourceType": "Bundle", "type": "collection"}, "http://localhost/fhir")
Traceback (most recent call last):
...
cds.errors.ParameterError: bundle: expected a FHIR Bundle of type 'transaction' or 'batch' (make one with results_bundle)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cds.errors import CdsError, ParameterError

__all__ = ["post_transaction", "FhirWriteError"]


class FhirWriteError(CdsError):
    """A FHIR server did not take a transaction; the message names the URL and the HTTP status."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        self.url = url
        self.status = status
        self.reason = reason
        super().__init__(f"{url}: {reason}")


def _outcome_message(outcome: Any) -> str | None:
    if not isinstance(outcome, Mapping) or outcome.get("resourceType") != "OperationOutcome":
        return None
    msgs = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, Mapping):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code")
        if text:
            where = ", ".join(issue.get("expression") or issue.get("location") or [])
            msgs.append(f"{issue.get('severity', 'error')}: {text}" + (f" ({where})" if where else ""))
    return "; ".join(msgs) or None


def post_transaction(bundle: Mapping[str, Any], base_url: str, timeout: float = 30,
                     session: Any = None) -> list[dict[str, Any]]:
    """POST a transaction (or batch) Bundle to a FHIR R4 server's base URL; per-entry outcomes.

    Returns one dict per request entry, in order: ``index``, ``request`` (``PUT Observation/<id>``),
    ``status`` (``"201 Created"``), ``status_code`` (201), ``location``, ``etag`` and ``message``
    (the entry's OperationOutcome text, if any). ``session`` is an optional ``requests.Session``
    (authentication headers, retries); without one a plain ``requests.post`` is made.

    Raises
    ------
    FhirWriteError
        The server cannot be reached, times out, answers an HTTP error (its OperationOutcome is
        quoted) or answers something that is not a transaction-response Bundle.
    ParameterError
        ``bundle`` is not a transaction/batch Bundle or ``base_url`` is not http(s).
    """
    import requests

    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle" \
            or bundle.get("type") not in ("transaction", "batch"):
        raise ParameterError("bundle", "expected a FHIR Bundle of type 'transaction' or 'batch' "
                                       "(make one with results_bundle)")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ParameterError("base_url", f"{base_url!r} is not an http(s) FHIR base URL")
    url = base_url.rstrip("/")
    body = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    headers = {"Content-Type": "application/fhir+json; charset=utf-8", "Accept": "application/fhir+json"}
    http = session if session is not None else requests
    try:
        resp = http.post(url, data=body, headers=headers, timeout=timeout)
    except requests.Timeout:
        raise FhirWriteError(url, f"no answer within {timeout} s") from None
    except requests.RequestException as exc:
        raise FhirWriteError(url, f"cannot reach FHIR server: {type(exc).__name__}: {exc}") from None
    try:
        answer = resp.json()
    except ValueError:
        answer = None
    if resp.status_code >= 400:
        detail = _outcome_message(answer) or (resp.text or "").strip()[:300] or resp.reason or "no detail"
        raise FhirWriteError(url, f"FHIR server answered HTTP {resp.status_code}: {detail}", resp.status_code)
    kind = f"{bundle.get('type')}-response"
    if not isinstance(answer, Mapping) or answer.get("resourceType") != "Bundle" or answer.get("type") != kind:
        raise FhirWriteError(url, f"HTTP {resp.status_code} but the answer is not a {kind} Bundle: "
                                  f"{(resp.text or '')[:200]!r}", resp.status_code)
    requests_sent = list(bundle.get("entry") or [])
    answers = list(answer.get("entry") or [])
    if len(answers) != len(requests_sent):
        raise FhirWriteError(url, f"{kind} has {len(answers)} entries for {len(requests_sent)} requests",
                             resp.status_code)
    out = []
    for i, (req, ans) in enumerate(zip(requests_sent, answers, strict=True)):
        r = (ans or {}).get("response") or {}
        status = str(r.get("status", ""))
        head = status.split(" ", 1)[0]
        rq = req.get("request") or {}
        out.append({
            "index": i,
            "request": f"{rq.get('method', '')} {rq.get('url', '')}".strip(),
            "status": status,
            "status_code": int(head) if head.isdigit() else None,
            "location": r.get("location"),
            "etag": r.get("etag"),
            "message": _outcome_message(r.get("outcome")),
        })
    return out
