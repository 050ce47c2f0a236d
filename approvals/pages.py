"""The HTML the `/decide` flow ends on: the signal to paste into the Temporal UI, or one line
saying what went wrong. Plain pages with no external assets; everything shown is escaped, and
the only script is inline, allowed by a per-response nonce."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Literal

from starlette.responses import HTMLResponse

from approvals.issuing import IssuedProof

Decision = Literal["approve", "reject", "abort", "pause", "resume"]
# Decisions on the whole launch rather than a gate: their input is a reason and the proof.
LAUNCH_DECISIONS: tuple[Decision, ...] = ("abort", "pause", "resume")
MAX_COMMENT_LENGTH = 2000

_STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; }
code, pre, textarea { font: 14px/1.4 ui-monospace, monospace; }
pre { background: #f4f4f4; padding: .75rem; white-space: pre-wrap; word-break: break-all; }
textarea { width: 100%; min-height: 4rem; box-sizing: border-box; }
dt { font-weight: 600; } dd { margin: 0 0 .5rem 0; }
.error { color: #a00; }
"""

# Keeps the signal input in step with the comment box and copies it.
_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById("signal-data").textContent);
  var input = data.input;
  var pre = document.getElementById("signal-input");
  var comment = document.getElementById("comment");
  var status = document.getElementById("copy-status");
  comment.addEventListener("input", function () {
    input[data.field] = comment.value;
    pre.textContent = JSON.stringify(input, null, 2);
  });
  function selectInput() {
    var range = document.createRange();
    range.selectNodeContents(pre);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    try { return document.execCommand("copy"); } catch (err) { return false; }
  }
  function said(copied) {
    status.textContent = copied ? "Copied." : "Select the input above and copy it.";
  }
  document.getElementById("copy").addEventListener("click", function () {
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(pre.textContent).then(
        function () { said(true); }, function () { said(selectInput()); });
    } else {
      said(selectInput());
    }
  });
})();
"""


@dataclass(frozen=True)
class SignalRequest:
    """What the person asked for on the `/decide` link."""

    launch: str
    run: str
    decision: Decision
    gate: str
    evidence: str


def signal_input(request: SignalRequest, proof: str) -> dict[str, str]:
    """The payload of the `approve`/`reject` or `abort`/`pause`/`resume` signal, comment (reason)
    empty."""
    if request.decision in LAUNCH_DECISIONS:
        return {"reason": "", "proof": proof}
    payload = {"gate": request.gate, "comment": "", "proof": proof}
    if request.evidence:
        payload["evidence"] = request.evidence
    return payload


def signal_page(request: SignalRequest, issued: IssuedProof, idp: str, email: str) -> HTMLResponse:
    """The page that hands the person the signal to send, with the proof in it."""
    payload = signal_input(request, issued.proof)
    field = "reason" if request.decision in LAUNCH_DECISIONS else "comment"
    if request.decision in LAUNCH_DECISIONS:
        title = f"{request.decision.capitalize()} launch {request.launch}"
        needed = "optional" if request.decision == "resume" else "required"
        what = f"Reason ({needed}; it goes into the input below)"
    else:
        verb = "Approve" if request.decision == "approve" else "Reject"
        title = f"{verb} gate {request.gate} of launch {request.launch}"
        what = "Comment (optional; it goes into the input below)"
    who = f"<strong>{escape(issued.name)}</strong>"
    if email and email != issued.name:
        who += f" ({escape(email)})"
    groups = ", ".join(escape(group) for group in issued.groups) or "none"
    rows = [
        ("Launch", request.launch),
        ("Run", request.run),
        *([("Gate", request.gate)] if request.gate else []),
        ("Decision", request.decision),
        *([("Evidence", request.evidence)] if request.evidence else []),
        ("Proof expires", _utc(issued.expires_at)),
    ]
    details = "".join(f"<dt>{escape(k)}</dt><dd><code>{escape(v)}</code></dd>" for k, v in rows)
    data = {"field": field, "input": payload}
    body = f"""
<h1>{escape(title)}</h1>
<p>Signed in as {who} at <code>{escape(idp)}</code>; groups: {groups}.</p>
<dl>{details}</dl>
<ol>
<li>In the Temporal UI, open the workflow <code>{escape(request.launch)}</code> and choose
<em>Send a Signal</em>.</li>
<li>Signal name: <code id="signal-name">{escape(request.decision)}</code></li>
<li><label for="comment">{escape(what)}</label>
<textarea id="comment" maxlength="{MAX_COMMENT_LENGTH}"></textarea></li>
<li>Input:
<pre id="signal-input">{escape(json.dumps(payload, indent=2, ensure_ascii=False))}</pre>
<button id="copy" type="button">Copy input</button> <span id="copy-status" role="status"></span>
</li>
<li>Send it before {escape(_utc(issued.expires_at))}; after that, open the link again for a
fresh proof.</li>
</ol>
<script type="application/json" id="signal-data">{_script_json(data)}</script>
"""
    return _page(title, body, script=_SCRIPT)


def error_page(message: str, status_code: int = 400) -> HTMLResponse:
    """One line saying what went wrong and what to do."""
    body = f'<h1>Phasegate approvals</h1>\n<p class="error" id="error">{escape(message)}</p>\n'
    return _page("Phasegate approvals: cannot continue", body, status_code=status_code)


def _page(
    title: str, body: str, *, script: str | None = None, status_code: int = 200
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    script_tag = f'<script nonce="{nonce}">{script}</script>\n' if script else ""
    html = (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n"
        f'<style nonce="{nonce}">{_STYLE}</style>\n'
        f"</head><body>\n{body}{script_tag}</body></html>\n"
    )
    return HTMLResponse(html, status_code=status_code, headers=page_headers(nonce))


def page_headers(nonce: str | None = None) -> dict[str, str]:
    """Headers for every page and redirect of the flow: nothing cached (a page holds a proof,
    a redirect carries a state), no referrer (the callback URL holds the sign-in code), no
    framing, and only this response's inline style and script."""
    policy = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    if nonce is not None:
        policy += f"; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'"
    return {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": policy,
    }


def _script_json(value: object) -> str:
    # Inside <script>, "</script>" or "<!--" in a value would end or confuse the element.
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
