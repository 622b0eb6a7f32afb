"""Points to InfluxDB line protocol, fast: one cached series key per series, one f-string per value.

A line is ``measurement,quality=good,tag=ADS.FEED.FLOW,unit=adsorption value=123.4 1700000000000``:
tag keys sorted (InfluxDB's preferred order), ``run`` on derived measurements only when the
writer gives one (``DERIVED``: a restarted process never overwrites a dead one's points),
``session`` only when set, the float field ``value`` written with ``repr`` (shortest text that
round-trips a float64 exactly, so a value read back equals the value written), the integer field
``status`` (the OPC UA StatusCode) when it is not 0, the string field ``text`` only when the point
has one (``value=1.0,text="ack by op1"``: operator actions, refusals), and the source timestamp as
an integer at the configured precision (``round(time_s * 10**k)``, Python's round: ties to even).

A point without a finite value (a Bad sample: NaN; or NaN/±inf of any quality) has no ``value``
field: its line is ``process,quality=bad,tag=T,unit=u status=2147811328i 1700000000000`` (the
``status`` field is always written then, 0 included: a line needs a field). Nothing is left out;
``Encoder.no_value`` counts these lines.

Why not ``influxdb_client.Point``: building one client object per value and calling
``to_line_protocol`` costs several microseconds per value; the cached-key f-string costs well
under one (numbers in docs/historian.md, ``benchmarks/historian_write.py --encode-only``).

Escaping (InfluxDB line protocol reference): measurement: comma, space; tag keys and values:
comma, equals sign, space; a trailing backslash in a tag value is not allowed, so it is doubled;
string field values: double quote and backslash (a newline inside the quotes is part of the value).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .base import Point

#: precision name -> (10**k multiplier of seconds, InfluxDB 1.x ``precision`` query value)
PRECISIONS: dict[str, tuple[int, str]] = {
    "s": (1, "s"),
    "ms": (1_000, "ms"),
    "us": (1_000_000, "u"),
    "ns": (1_000_000_000, "ns"),
}


def escape_measurement(name: str) -> str:
    return name.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def escape_tag(text: str) -> str:
    out = text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
    return out.replace("\n", "\\n")


def escape_string_field(text: str) -> str:
    """A string field value, quotes included: ``"say \\"hi\\""``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: measurements a process derives (tagged with its run); ``process`` points are the PLC's values at
#: their own source time, the same whoever records them
DERIVED = frozenset({"estimate", "decision", "alarm", "audit", "kpi"})


def series_key(p: Point, run: str = "") -> str:
    """``measurement,quality=..,run=..,session=..,tag=..,unit=..`` (tag keys in sorted order;
    ``run`` only on ``DERIVED`` measurements)."""
    key = f"{escape_measurement(p.measurement)},quality={escape_tag(p.quality or 'good')}"
    if run and p.measurement in DERIVED:
        key += f",run={escape_tag(run)}"
    if p.session:
        key += f",session={escape_tag(p.session)}"
    key += f",tag={escape_tag(p.tag)}"
    if p.unit:
        key += f",unit={escape_tag(p.unit)}"
    return key


def timestamp(time_s: float, multiplier: int) -> int:
    """Source time in seconds to the integer timestamp at a precision (ties to even)."""
    return round(time_s * multiplier)


class Encoder:
    """Reusable encoder; keeps the series-key cache between batches (bounded, cleared when full)."""

    def __init__(self, precision: str = "ms", max_cached_series: int = 100_000):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.multiplier = PRECISIONS[precision][0]
        self._keys: dict[tuple[str, str, str, str, str, str], str] = {}
        self._max = max_cached_series
        self.no_value = 0  # lines written without a value field (non-finite value)

    def lines(self, points: Iterable[Point], run: str = "") -> list[str]:
        keys = self._keys
        mult = self.multiplier
        out: list[str] = []
        append = out.append
        for p in points:
            k = (p.measurement, p.tag, p.unit, p.quality, p.session, run)
            key = keys.get(k)
            if key is None:
                if len(keys) >= self._max:
                    keys.clear()
                key = keys[k] = series_key(p, run) + " value="
            v = p.value
            if type(v) is not float:
                v = float(v)
            if v - v == 0.0 and not (p.status or p.text):  # the common case: finite, Good, no text
                append(f"{key}{v!r} {round(p.time_s * mult)}")
            else:  # the key without "value="
                append(f"{key[:-6]}{self._fields(p, v)} {round(p.time_s * mult)}")
        return out

    def _fields(self, p: Point, v: float) -> str:
        if v - v == 0.0:
            fields = f"value={v!r},status={int(p.status)}i" if p.status else f"value={v!r}"
        else:  # NaN, ±inf: no value field, the status is the field
            self.no_value += 1
            fields = f"status={int(p.status)}i"
        return f"{fields},text={escape_string_field(p.text)}" if p.text else fields

    def encode(self, points: Sequence[Point] | Iterable[Point], run: str = "") -> bytes:
        """The batch as one request body (newline-separated lines, UTF-8)."""
        return "\n".join(self.lines(points, run)).encode()


class EncodingSink:
    """Base of the sinks that send pre-encoded line protocol: ``settings.precision`` picks the
    encoder, ``write_batch`` is ``write_body(encode(points))`` and the recorder may call ``encode``
    and ``write_body`` separately (encoding the next batch while one is in flight)."""

    def __init__(self, settings) -> None:
        if settings.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}")
        self.settings = settings
        self.encoder = Encoder(settings.precision)

    def encode(self, points: Sequence[Point], run: str = "") -> bytes:
        return self.encoder.encode(points, run)

    def write_batch(self, points: Sequence[Point], run: str = "") -> None:
        self.write_body(self.encode(points, run))

    def write_body(self, body: bytes) -> None:
        raise NotImplementedError
