"""The web view: a live page of the last inspections, Prometheus metrics and health endpoints.

    view.py      WebView: the companion `serve`, the component, `agent` and `demo --live` run
    feed.py      the service's observer: metrics now, pictures on a thread of its own
    history.py   the last inspections in memory, bounded by count and bytes
    metrics.py   prometheus_client registry and instruments
    backends.py  what is read from a Service or a stand-alone Edge Agent; readiness
    app.py       routes, access (token, loopback Host), the live event stream
    server.py    http.server, bounded (connections, request heads, timeouts)
    assets/      the page: index.html, app.js, style.css (served from the package, no CDN)

Imports service and inspection, never transports, agent or the entry points (host.py wires it).
docs/web.md is the user's guide.
"""

from lfv_edge.web.view import WebView

__all__ = ["WebView"]
