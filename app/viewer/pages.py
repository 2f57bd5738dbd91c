"""The viewer's own small pages: sign in with an API key, and how to install the viewer.

Plain HTML with no script from elsewhere; every value put into a page is escaped.
"""

from __future__ import annotations

from html import escape

SIGN_IN = "/viewer/sign-in"
DEFAULT_NEXT = "/viewer/"

_STYLE = """
body { font-family: system-ui, sans-serif; background: #0b1220; color: #e6edf3; margin: 0; }
main { max-width: 30rem; margin: 12vh auto; padding: 2rem; background: #111a2e;
       border-radius: 8px; }
h1 { font-size: 1.4rem; margin-top: 0; }
label { display: block; margin-bottom: .4rem; }
input[type=password] { width: 100%; box-sizing: border-box; padding: .6rem; font: inherit;
       border-radius: 4px; border: 1px solid #3b4a6b; background: #0b1220; color: inherit; }
button { margin-top: 1rem; padding: .6rem 1.2rem; font: inherit; border: 0;
         border-radius: 4px; background: #2f81f7; color: white; cursor: pointer; }
.error { background: #5a1d1d; padding: .6rem; border-radius: 4px; }
code, pre { background: #0b1220; padding: .1rem .3rem; border-radius: 3px; }
pre { padding: .6rem; overflow-x: auto; }
small { color: #8b949e; }
"""


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of the viewer, never another site."""
    if (not target or not target.startswith("/viewer") or target.startswith("//")
            or "\\" in target or any(ord(c) < 32 for c in target)):
        return DEFAULT_NEXT
    return target


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body><main>{body}</main></body></html>")


def sign_in(next_path: str | None = None, error: str = "") -> str:
    error_html = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return _page("MedGate viewer: sign in", f"""
<h1>MedGate viewer</h1>
<p>Sign in with your MedGate API key (a clinician's or an administrator's).</p>
{error_html}
<form method="post" action="/api/v1/session">
  <label for="key">API key</label>
  <input type="password" id="key" name="key" autocomplete="current-password" required
         placeholder="mg_...">
  <input type="hidden" name="next" value="{escape(safe_next(next_path))}">
  <button type="submit">Sign in</button>
</form>
<p><small>The browser keeps a session cookie that lets it read images and reports; any change
still needs the key itself. The session ends when it expires, when you sign out
(<code>DELETE /api/v1/session</code>), or when your key is revoked.</small></p>
""")


def not_installed(viewer_dir: str) -> str:
    return _page("MedGate viewer: not installed", f"""
<h1>The viewer is not installed</h1>
<p>MedGate serves the OHIF viewer here once its files are installed. In the MedGate folder,
run</p>
<pre>make viewer</pre>
<p>It fetches the pinned <code>@ohif/app</code> package with npm into
<code>{escape(viewer_dir)}</code> (set <code>MEDGATE_VIEWER_DIR</code> to use another
folder); then reload this page. See <code>docs/viewer.md</code>.</p>
""")
