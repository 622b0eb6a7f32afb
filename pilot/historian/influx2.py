"""InfluxDB 2.x / 3.x sink through ``influxdb-client`` (``/api/v2/write``: org, bucket, token).

The batch is pre-encoded line protocol (``lineproto.Encoder``) handed to the client's synchronous
write API as bytes: the client only adds the token header, org/bucket/precision parameters and
the HTTP exchange. urllib3's own retries are switched off (``retries=False``): the recorder's spool
is the one retry mechanism, so an outage never stalls the worker inside the client.

Errors: an ``ApiException`` with status 400/413 -> ``PointsRejected`` (put aside, not retried);
any other status, and every transport error -> ``SinkError`` (spooled, replayed later).
InfluxDB 3 serves the same endpoint (the "bucket" is the database name; org is ignored).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from ..secrets import redact_text, redacted_repr
from .base import SinkError
from .influx1 import PointsRejected
from .lineproto import EncodingSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Influx2Settings:
    url: str = "http://127.0.0.1:8086"
    org: str = "pilot"
    bucket: str = "pilot"
    token: str = field(default="", repr=False)
    precision: str = "ms"
    timeout_s: float = 10.0

    def __repr__(self) -> str:
        return redacted_repr(self)


class Influx2Sink(EncodingSink):
    """Sink into an InfluxDB 2.x bucket / 3.x database via influxdb-client."""

    def __init__(self, settings: Influx2Settings | None = None, **overrides):
        super().__init__(replace(settings or Influx2Settings(), **overrides))
        self._client = None
        self._write = None

    def open(self) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        s = self.settings
        self._client = InfluxDBClient(url=s.url, token=s.token, org=s.org,
                                      timeout=int(s.timeout_s * 1000), retries=False)
        self._write = self._client.write_api(write_options=SYNCHRONOUS)

    def write_body(self, body: bytes) -> None:
        from influxdb_client.rest import ApiException

        if not body:
            return
        if self._write is None:
            raise SinkError("Influx2Sink: write before open()")
        s = self.settings
        try:
            self._write.write(bucket=s.bucket, org=s.org, record=body, write_precision=s.precision)
        except ApiException as exc:
            text = (exc.body or b"")[:300]
            text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
            if exc.status in (400, 413):
                raise PointsRejected(f"InfluxDB refused the batch ({exc.status}): {text}") from exc
            raise SinkError(f"InfluxDB write failed ({exc.status}): {text}") from exc
        except Exception as exc:  # urllib3 transport errors have no common public base here
            raise SinkError(redact_text(f"InfluxDB at {s.url} unreachable: {exc}")) from exc

    def flush(self) -> None:
        """Synchronous writes: nothing buffered in the client."""

    def close(self) -> None:
        if self._write is not None:
            self._write.close()
        if self._client is not None:
            self._client.close()
        self._client = self._write = None
