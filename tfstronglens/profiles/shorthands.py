"""The lens-model shorthands (``"sie+shear"``, ``"epl+shear+m4"``, ...) as data: each name
-> its components, ``(profile name, settings)`` pairs in order (main deflector, external
shear, then circular multipoles of the listed orders).

The one table of these names: :data:`tfstronglens.inference.spec.LENS_SHORTHANDS` turns it
into model components (with priors, and the multipoles' centres tied to the main
deflector's); the dataset generator draws the ones without multipoles. It lives here, with
the profiles it names, so that neither layer imports the other for it.
"""

from __future__ import annotations

__all__ = ["LENS_SHORTHAND_COMPONENTS", "MULTIPOLE_SETS"]

#: shorthand suffix -> the orders ``m`` of the circular multipoles it adds.
MULTIPOLE_SETS = {"": (), "+m4": (4,), "+m3m4": (3, 4), "+m1m3m4": (1, 3, 4)}

#: shorthand name -> ``((profile, settings), ...)``.
LENS_SHORTHAND_COMPONENTS = {
    f"{main.lower()}+shear{suffix}": ((main, {}), ("SHEAR", {}))
    + tuple(("MULTIPOLE", {"m": m}) for m in orders)
    for main in ("SIE", "EPL") for suffix, orders in MULTIPOLE_SETS.items()
}
