"""Alarm transitions as Grafana annotations, through Grafana's HTTP API (``POST /api/annotations``).

Called directly with ``http.client`` rather than through ``grafana-client``: that package pulls in
``urllib3-future``, which installs itself under the import name ``urllib3`` and so replaces the
urllib3 that ``influxdb-client`` (and pip's vendored users of requests) run on. One endpoint and
one JSON body do not justify that risk (docs/historian.md, "Grafana annotations").

``GrafanaAnnotations`` is a ``Sink``: it takes only ``alarm`` points and posts one annotation per
transition, tagged ``pilot-alarm``, the plant unit, the alarm name and ``raised`` / ``cleared``,
its text followed by the point's ``text`` when it has one (the dashboards' "Alarm transitions"
annotation query selects the ``pilot-alarm`` tag). Run it behind its own ``Recorder`` so that a
slow or absent Grafana never delays anything: ``Recorder(GrafanaAnnotations.from_env(),
batch_size=50)``. Failures raise ``SinkError`` (the
recorder keeps the batch and retries); a 4xx other than 401/403/429 raises ``PointsRejected``.
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Mapping, Sequence

from ..secrets import redact_url
from .base import Point, SinkError
from .influx1 import HttpEndpoint, PointsRejected

ALARM_TAG = "pilot-alarm"


class GrafanaAnnotations:
    def __init__(self, url: str, token: str, *, dashboard_uid: str = "", timeout_s: float = 5.0):
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url
        self.http = HttpEndpoint(url, timeout_s, headers)
        self.dashboard_uid = dashboard_uid
        self.posted = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GrafanaAnnotations | None:
        """From PILOT_GRAFANA_URL and PILOT_GRAFANA_TOKEN (or PILOT_GRAFANA_TOKEN_FILE); None when
        either is unset."""
        from .settings import secret_from_env

        env = os.environ if environ is None else environ
        url, token = env.get("PILOT_GRAFANA_URL", ""), secret_from_env(env, "PILOT_GRAFANA_TOKEN")
        return cls(url, token) if url and token else None

    @staticmethod
    def body(p: Point, dashboard_uid: str = "") -> dict:
        state = "raised" if p.value > 0 else "cleared"
        text = f"{p.tag} {state} ({p.unit})" + (f": {p.text}" if p.text else "")
        out = {"time": round(p.time_s * 1000), "tags": [ALARM_TAG, p.unit, p.tag, state], "text": text}
        if dashboard_uid:
            out["dashboardUID"] = dashboard_uid
        return out

    def open(self) -> None:
        """Nothing up front: an absent Grafana is handled like any outage."""

    def write_batch(self, points: Sequence[Point], run: str = "") -> None:
        """Post each alarm transition (``run`` is not shown); the batch is retried whole, so a retry may repeat the
        annotations posted before the failure (harmless marks, never lost ones)."""
        for p in points:
            if p.measurement == "alarm":
                self._post(self.body(p, self.dashboard_uid))

    def _post(self, body: dict) -> None:
        try:
            status, data = self.http.request("POST", "/api/annotations", json.dumps(body).encode())
        except (OSError, http.client.HTTPException) as exc:
            raise SinkError(f"Grafana at {redact_url(self.url)} unreachable: {exc}") from exc
        if status == 200:
            self.posted += 1
            return
        text = data[:300].decode(errors="replace")
        if 400 <= status < 500 and status not in (401, 403, 408, 429):
            raise PointsRejected(f"Grafana refused the annotation ({status}): {text}")
        raise SinkError(f"Grafana annotation failed ({status}): {text}")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.http.close()
