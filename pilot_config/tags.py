"""PLC tags: what the plant's PLCs expose, in engineering units.

Every tag names the twin signal it mirrors (``signal``, SI units, e.g. ``cells.cell1.current``)
and its engineering unit; the conversion is ``eng = scale * si + offset``. Scale and offset
come from ``ENG_UNITS`` for the common units, from the species molar mass for ``mg/L`` and
``g/L`` (the species is the last dotted part of the signal name), or are given explicitly.

Kinds:
- ``sensor``: a measurement with Gaussian noise (``noise_sd`` in engineering units), read-only;
- ``analyser``: an online analyser (XRF / ICP-OES) that samples every ``period_s`` and reports
  ``delay_s`` later, read-only;
- ``actuator``: a manipulated variable written by the control system (pump speed, current);
- ``setpoint``: an operator / controller setpoint, writable;
- ``status``: a discrete state (phase, mode, alarm flag, heartbeat), read-only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import MOLAR_MASS_G_PER_MOL, ZERO_CELSIUS_K, StrictModel

TagKind = Literal["sensor", "analyser", "actuator", "setpoint", "status"]
WRITABLE_KINDS: frozenset[str] = frozenset({"actuator", "setpoint"})

#: engineering unit -> (scale, offset) from SI
ENG_UNITS: dict[str, tuple[float, float]] = {
    "L/h": (3.6e6, 0.0),
    "m3/h": (3600.0, 0.0),
    "mL/min": (6e7, 0.0),
    "degC": (1.0, -ZERO_CELSIUS_K),
    "K": (1.0, 0.0),
    "kPa": (1e-3, 0.0),
    "bar": (1e-5, 0.0),
    "Pa": (1.0, 0.0),
    "mbar": (1e-2, 0.0),
    "A": (1.0, 0.0),
    "V": (1.0, 0.0),
    "W": (1.0, 0.0),
    "kW": (1e-3, 0.0),
    "kg": (1.0, 0.0),
    "g": (1e3, 0.0),
    "kg/h": (3600.0, 0.0),
    "g/h": (3.6e6, 0.0),
    "mol/L": (1e-3, 0.0),
    "mol/m3": (1.0, 0.0),
    "pH": (1.0, 0.0),
    "%": (100.0, 0.0),
    "ppm": (1e6, 0.0),
    "wt%": (100.0, 0.0),
    "1": (1.0, 0.0),
    "s": (1.0, 0.0),
    "min": (1.0 / 60.0, 0.0),
    "h": (1.0 / 3600.0, 0.0),
    "m": (1.0, 0.0),
    "L": (1e3, 0.0),
    "kWh/kg": (1.0 / 3.6e6, 0.0),
}
#: concentration units that need the species molar mass (mol/m3 * g/mol = g/m3 = mg/L)
MASS_CONC_UNITS: dict[str, float] = {"mg/L": 1.0, "g/L": 1e-3}


class OpcUaTag(StrictModel):
    """How the tag appears on the PLC's OPC UA server."""

    node_id: str | None = Field(
        None, description="string NodeId identifier in the config's namespace; default: the tag name"
    )
    data_type: Literal["Float", "Double", "Boolean", "Int32", "UInt32"] = Field(
        "Float", description="variant type on the wire (a PLC REAL is a Float)"
    )
    sampling_interval_ms: float = Field(1000.0, gt=0)
    queue_size: int = Field(1, ge=1)
    deadband_abs: float = Field(0.0, ge=0, description="absolute deadband, engineering units")
    plc: str | None = Field(None, description=(
        "the PLC (opcua.plcs name) serving this tag; default: the PLC claiming its plant unit"))


class Tag(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
    signal: str = Field(description="twin signal this tag mirrors (SI units)")
    kind: TagKind
    unit: str = Field(description="engineering unit, e.g. L/h, degC, mg/L, A, V")
    low: float = Field(description="engineering range low (EURange)")
    high: float = Field(description="engineering range high (EURange)")
    description: str = ""
    scale: float | None = Field(None, description="eng = scale*si + offset; default from unit")
    offset: float | None = None
    noise_sd: float = Field(0.0, ge=0, description="sensor noise standard deviation, eng units")
    delay_s: float = Field(0.0, ge=0, description="analyser reporting delay")
    period_s: float = Field(0.0, ge=0, description="analyser sampling period (0: every tick)")
    max_rate_per_s: float | None = Field(
        None, gt=0, description="rate-of-change limit for writes, eng units per second"
    )
    opcua: OpcUaTag = OpcUaTag()

    @property
    def writable(self) -> bool:
        return self.kind in WRITABLE_KINDS

    @property
    def plant_unit(self) -> str:
        """The plant unit (flowsheet block) the tag belongs to: the first part of its signal."""
        return self.signal.split(".", 1)[0]

    @model_validator(mode="after")
    def _check(self) -> "Tag":
        if not self.high > self.low:
            raise ValueError(f"range high ({self.high}) must be greater than low ({self.low})")
        if self.kind == "analyser" and self.period_s <= 0:
            raise ValueError("an analyser needs period_s > 0 (its sampling period)")
        if self.scale is None and self.unit not in ENG_UNITS and self.unit not in MASS_CONC_UNITS:
            allowed = ", ".join(sorted([*ENG_UNITS, *MASS_CONC_UNITS]))
            raise ValueError(f"unknown unit {self.unit!r}: give scale/offset or use one of {allowed}")
        if self.unit in MASS_CONC_UNITS and self.scale is None:
            sp = self.signal.rsplit(".", 1)[-1]
            if sp not in MOLAR_MASS_G_PER_MOL:
                raise ValueError(
                    f"unit {self.unit} needs the species as the last part of the signal name "
                    f"(got {self.signal!r}) or an explicit scale"
                )
        return self

    def conversion(self) -> tuple[float, float]:
        """(scale, offset) with eng = scale*si + offset."""
        if self.scale is not None:
            return self.scale, self.offset or 0.0
        if self.unit in MASS_CONC_UNITS:
            sp = self.signal.rsplit(".", 1)[-1]
            return MOLAR_MASS_G_PER_MOL[sp] * MASS_CONC_UNITS[self.unit], self.offset or 0.0
        scale, offset = ENG_UNITS[self.unit]
        return scale, offset if self.offset is None else self.offset

    def to_eng(self, si: float) -> float:
        scale, offset = self.conversion()
        return scale * si + offset

    def to_si(self, eng: float) -> float:
        scale, offset = self.conversion()
        return (eng - offset) / scale
