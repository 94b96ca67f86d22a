"""Write a bundle whose weights interpolate a base bundle and a fine-tune of it (WiSE-FT):
``(1 - alpha) * base + alpha * tuned`` (see tympan.models.interpolate). The result keeps the
tuned bundle's metadata and held-out clip list, records both parents and alpha in its provenance,
and is not calibrated: run ``tympan calibrate --bundle OUT --data-dir ...`` (it recomputes the
held-out logits with the new weights) before trusting its probabilities.

    python scripts/interpolate_bundles.py --base tympan/assets/default --tuned runs/T --alpha 0.5 --out runs/W
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from tympan.bundle import HELDOUT_META, HELDOUT_TENSORS, load_bundle, weights_fingerprint
from tympan.errors import BundleError
from tympan.models.interpolate import InterpolationError, interpolate_state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True)
    p.add_argument("--tuned", type=Path, required=True)
    p.add_argument("--alpha", type=float, required=True, help="0 = base, 1 = tuned")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", help="the new bundle's name (default: the tuned bundle's)")
    args = p.parse_args(argv)
    try:
        base, tuned = load_bundle(args.base), load_bundle(args.tuned)
        if (base.arch, base.classes, base.frontend) != (tuned.arch, tuned.classes, tuned.frontend):
            raise InterpolationError("the bundles differ in architecture, classes or front end")
        parents = {"base": {"bundle": args.base.name, "name": base.name, "sha256": weights_fingerprint(base.model)},
                   "tuned": {"bundle": args.tuned.name, "name": tuned.name,
                             "sha256": weights_fingerprint(tuned.model)}}  # before the weights are replaced
        state = interpolate_state(base.model.state_dict(), tuned.model.state_dict(), args.alpha)
        tuned.model.load_state_dict(state, strict=True)
        prov = {**tuned.provenance, "interpolated": {
            "method": "WiSE-FT: (1 - alpha) * base + alpha * tuned", "alpha": args.alpha, **parents}}
        for key in ("machine", "summary"):  # what the base says of the lineage, when the fine-tune does not
            if key in base.provenance and key not in prov:
                prov[key] = base.provenance[key]
        # metrics are the held-out figures of other weights: calibrate rewrites them from the new held-out logits
        out = tuned.replace(model=tuned.model, provenance=prov, metrics={}, extra={}, name=args.name or tuned.name)
        out.save(args.out)
        for name in (HELDOUT_TENSORS, HELDOUT_META):  # the clip list; the logits are stamped with the
            if (args.tuned / name).is_file():         # tuned weights, so calibrate sees them stale and recomputes
                shutil.copyfile(args.tuned / name, args.out / name)
    except (BundleError, InterpolationError, OSError) as exc:
        print(f"interpolate_bundles: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (alpha {args.alpha}; weights {weights_fingerprint(out.model)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
