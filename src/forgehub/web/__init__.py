"""The dashboard: server-rendered pages (Jinja2) with a little JavaScript, at ``/``.

Pages read the store directly (one short query or two per page) and act through the platform
API from the browser, authenticated by the session cookie and protected against CSRF.
"""

from forgehub.web.app import install

__all__ = ["install"]
