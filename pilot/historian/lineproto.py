"""Points to InfluxDB line protocol, fast: one cached series key per series, one f-string per value.

A line is ``measurement,quality=good,tag=ADS.FEED.FLOW,unit=adsorption value=123.4 1700000000000``:
tag keys sorted (InfluxDB's preferred order), ``session`` only when set, the float field
``value`` written with ``repr`` (shortest text that round-trips a float64 exactly, so a value read
back equals the value written), the string field ``text`` only when the point has one
(``value=1.0,text="ack by op1"``: operator actions, refusals), and the source timestamp as an integer at the configured
precision (``round(time_s * 10**k)``, Python's round: ties to even). Non-finite values (NaN, ±inf) have no line-protocol
form: they are left out and counted (``Encoder.skipped``).

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


def series_key(p: Point) -> str:
    """``measurement,quality=..,session=..,tag=..,unit=..`` (tag keys in sorted order)."""
    key = f"{escape_measurement(p.measurement)},quality={escape_tag(p.quality or 'good')}"
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
        self._keys: dict[tuple[str, str, str, str, str], str] = {}
        self._max = max_cached_series
        self.skipped = 0

    def lines(self, points: Iterable[Point]) -> list[str]:
        keys = self._keys
        mult = self.multiplier
        out: list[str] = []
        append = out.append
        for p in points:
            k = (p.measurement, p.tag, p.unit, p.quality, p.session)
            key = keys.get(k)
            if key is None:
                if len(keys) >= self._max:
                    keys.clear()
                key = keys[k] = series_key(p) + " value="
            v = p.value
            if type(v) is not float:
                v = float(v)
            if v - v == 0.0:  # finite (NaN and ±inf give NaN)
                if p.text:
                    append(f"{key}{v!r},text={escape_string_field(p.text)} {round(p.time_s * mult)}")
                else:
                    append(f"{key}{v!r} {round(p.time_s * mult)}")
            else:
                self.skipped += 1
        return out

    def encode(self, points: Sequence[Point] | Iterable[Point]) -> bytes:
        """The batch as one request body (newline-separated lines, UTF-8)."""
        return "\n".join(self.lines(points)).encode()


class EncodingSink:
    """Base of the sinks that send pre-encoded line protocol: ``settings.precision`` picks the
    encoder, ``write_batch`` is ``write_body(encode(points))`` and the recorder may call ``encode``
    and ``write_body`` separately (encoding the next batch while one is in flight)."""

    def __init__(self, settings) -> None:
        if settings.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}")
        self.settings = settings
        self.encoder = Encoder(settings.precision)

    def encode(self, points: Sequence[Point]) -> bytes:
        return self.encoder.encode(points)

    def write_batch(self, points: Sequence[Point]) -> None:
        self.write_body(self.encode(points))

    def write_body(self, body: bytes) -> None:
        raise NotImplementedError
