from _paths import DATA, REPO, WORK  # noqa: F401,E402 (sets sys.path)
import time, pickle
import numpy as np
import trust
from tympan.bundle import resolve_bundle_dir
S = resolve_bundle_dir(None)
R = [REPO / 'runs' / f'mn04-robust-cv-f{k}' for k in range(1, 6)]
res = {}
for name, b in [('S', S)] + [(f'R{k+1}', r) for k, r in enumerate(R)]:
    t0 = time.time()
    outs = trust.compute_all(b, DATA)
    y = trust.load_heldout_set(b, DATA)[1].labels
    res[name] = {'y': np.asarray(y), 'outs': {s: {k: v for k, v in o.items() if k in ('logits', 'energy', 'embeddings')} for s, o in outs.items()}}
    print(name, b, time.time() - t0, list(outs)[:3], {k: np.shape(v) for k, v in outs['clean'].items()}, flush=True)
fam = {c.label: c.steps for c in trust.conditions()}
res['conditions'] = {c.label: (c.steps, c.description) for c in trust.conditions()}
pickle.dump(res, open(WORK / 'cache.pkl', 'wb'))
