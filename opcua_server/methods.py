"""The declared methods of the operator face: name, inputs, least role, audit name, and the check
of a call's inputs against them (before anything is queued)."""

from __future__ import annotations

from dataclasses import dataclass

from asyncua import ua

from .tagmap import Role


@dataclass(frozen=True)
class MethodSpec:
    """One operator method: its inputs (name, variant type), the least role and the audit name."""

    name: str
    action: str
    inputs: tuple[tuple[str, ua.VariantType], ...]
    role: Role

    def arguments(self) -> list[ua.Argument]:
        return [ua.Argument(Name=n, DataType=ua.NodeId(t.value), ValueRank=-1) for n, t in self.inputs]


def check_arguments(spec: MethodSpec, variants: tuple[ua.Variant, ...]) -> tuple[object, str] | None:
    """(what to answer, why) when the inputs do not match the method's declared arguments, else None."""
    want, got = len(spec.inputs), len(variants)
    if got < want:
        return ua.StatusCode(ua.StatusCodes.BadArgumentsMissing), (
            f"{spec.name} takes {want} argument(s) ({', '.join(n for n, _ in spec.inputs)}); got {got}")
    if got > want:
        return ua.StatusCode(ua.StatusCodes.BadTooManyArguments), f"{spec.name} takes {want} argument(s); got {got}"
    results = [ua.StatusCode(ua.StatusCodes.Good if v.VariantType == t and v.Value is not None
                             else ua.StatusCodes.BadTypeMismatch) for v, (_, t) in zip(variants, spec.inputs)]
    bad = [k for k, r in enumerate(results) if not r.is_good()]
    if not bad:
        return None
    name, vtype = spec.inputs[bad[0]]
    answer = ua.CallMethodResult(StatusCode=ua.StatusCode(ua.StatusCodes.BadInvalidArgument),
                                 InputArgumentResults=results)
    return answer, f"argument {name} must be a {vtype.name}; got {variants[bad[0]].VariantType.name}"
