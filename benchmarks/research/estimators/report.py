from _paths import DATA, REPO, WORK  # noqa: F401,E402 (sets sys.path)
import sys, pickle, numpy as np
n = sys.argv[1] if len(sys.argv) > 1 else '20'
run = sys.argv[3] if len(sys.argv) > 3 else ''  # '' or '2' (harness.py's third argument)
res = pickle.load(open(WORK / f'res{run}_n{n}.pkl', 'rb'))
def pooled(keys):
    rs = [res[k] for k in keys]
    out = {}
    for s in rs[0]:
        out[s] = {'true': np.mean([r[s]['true'] for r in rs]), 'bias': {m: np.mean([r[s]['bias'][m] for r in rs]) for m in rs[0][s]['bias']}}
    return out
tabs = {}
if 'S' in res: tabs['S'] = res['S']
R = [k for k in res if k.startswith('R')]
if R: tabs['R'] = pooled(R)
methods = list(next(iter(tabs.values()))['clean']['bias'])
sel = sys.argv[2].split(',') if len(sys.argv) > 2 and sys.argv[2] != 'all' else methods
print('summary: max|bias| (pts) / #within 2 / mean|bias|')
for m in methods:
    line = f'{m:<22}'
    for t, d in tabs.items():
        b = np.array([d[s]['bias'][m] for s in d]) * 100
        line += f'  {t}: {np.abs(b).max():5.1f} {int((np.abs(b) <= 2).sum()):2d}/{len(b)} {np.abs(b).mean():4.1f}'
    print(line)
for t, d in tabs.items():
    print(f'\nmodel {t}')
    print(f"{'shift':<24}{'true':>6}" + ''.join(f'{m[:12]:>13}' for m in sel))
    for s in d:
        print(f"{s:<24}{d[s]['true']*100:6.1f}" + ''.join(f"{d[s]['bias'][m]*100:+13.1f}" for m in sel))
