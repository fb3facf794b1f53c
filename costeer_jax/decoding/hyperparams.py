"""Valid ranges of the methods' hyperparameters, and the legal values that degenerate.

An out-of-range value is refused (ValueError naming the range); a legal value at a boundary
where the method stops doing what its name says gets a warning that says what it does instead.
Checked once per configuration (a run, or each point of a sweep), not per batch.
"""
from __future__ import annotations

import math
from typing import Mapping

# key -> (low, low inclusive, high, high inclusive, meaning); None = unbounded
RANGES = {
    "alpha": (0.0, True, None, False, "CoSteer alignment weight (Eq. 4)"),
    "beta": (0.0, True, None, False, "CoSteer steering weight on the SLM delta (Eq. 4)"),
    "lam": (0.0, True, None, False, "CoSteer KL weight towards the LLM (Eq. 7)"),
    "eta": (0.0, False, None, False, "CoSteer FTRL step size (Eq. 7)"),
    "T": (1, True, None, False, "CoSteer FTRL iterations per token"),
    "tau": (0.0, True, 1.0, True, "AdaCoSteer confidence threshold (a probability)"),
    "k_consecutive": (1, True, None, False, "AdaCoSteer streak length"),
    "cs_lambda": (0.0, True, None, False, "LA/CS scaling of the context delta"),
    "spec_lambda": (0.0, True, None, False, "SpecSteer verification threshold (Eq. 7)"),
    "spec_beta": (0.0, True, None, False, "SpecSteer recovery steering strength (Eq. 8)"),
}

# c_T above this makes exp(c_T * Delta) dwarf the LLM term: the policy is the SLM delta's argmax.
DEGENERATE_COEFFICIENT = 100.0


def _range_text(low, low_inc, high, high_inc) -> str:
    left = "[" if low_inc else "("
    right = "]" if high_inc else ")"
    return f"{left}{low}, {'inf' if high is None else high}{right}"


def check_hyper(values: Mapping[str, float], where: str = "") -> list[str]:
    """Raises ValueError for an out-of-range value; returns warnings for degenerate ones."""
    prefix = f"{where}: " if where else ""
    for key, value in values.items():
        if key not in RANGES:
            continue
        low, low_inc, high, high_inc, meaning = RANGES[key]
        if not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
            raise ValueError(f"{prefix}{key}={value!r} is not a finite number ({meaning})")
        too_low = value < low or (value == low and not low_inc)
        too_high = high is not None and (value > high or (value == high and not high_inc))
        if too_low or too_high:
            raise ValueError(f"{prefix}{key}={value} is out of range: {meaning} must be in "
                             f"{_range_text(low, low_inc, high, high_inc)}")
        if key in ("T", "k_consecutive") and value != int(value):
            raise ValueError(f"{prefix}{key}={value} must be an integer ({meaning})")
    return _degenerate(values, prefix)


def _degenerate(values: Mapping[str, float], prefix: str) -> list[str]:
    notes = []
    if {"beta", "lam", "eta", "T"} <= set(values):
        if values["beta"] == 0:
            notes.append(f"{prefix}beta=0: no steering at all, CoSteer decodes as llm_wo")
        else:
            from costeer_jax.steering import costeer_delta_coefficient

            c = float(costeer_delta_coefficient(values.get("alpha", 0.0), values["beta"], values["lam"],
                                                values["eta"], int(values["T"])))
            if not math.isfinite(c) or abs(c) > DEGENERATE_COEFFICIENT:
                notes.append(
                    f"{prefix}lam={values['lam']}, eta={values['eta']}, alpha={values.get('alpha')}, "
                    f"T={int(values['T'])} make the FTRL coefficient c_T = {c:.3g}: the policy is "
                    "~argmax of the SLM delta and ignores the LLM (the defaults give c_20 = 1.78)")
    if values.get("tau") == 1.0:
        notes.append(f"{prefix}tau=1: no LLM step is ever that confident, AdaCoSteer never stops "
                     "steering (= costeer)")
    if values.get("cs_lambda") == 0:
        notes.append(f"{prefix}cs_lambda=0: LA/CS decodes as slm_wo")
    if values.get("spec_lambda") == 0:
        notes.append(f"{prefix}spec_lambda=0: every draft passes verification, SpecSteer outputs the "
                     "SLM+ drafter's text")
    if values.get("spec_beta") == 0:
        notes.append(f"{prefix}spec_beta=0: recovery resamples from the plain LLM (no steering)")
    return notes


def check_sampling(greedy: bool, temperature: float, top_p: float) -> None:
    if greedy:
        return
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature={temperature} is out of range: sampling needs a temperature in "
                         "(0, inf) (greedy decoding is the default without --do_sample)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} is out of range: nucleus mass must be in (0, 1]")
