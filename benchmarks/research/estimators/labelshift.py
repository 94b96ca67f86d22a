"""Robustness to label shift: same protocol, but half B is resampled with Dirichlet class weights (100 clips,
weighted sampling without replacement), so the field's class mix differs from the (balanced) held-out set."""
from _paths import DATA, REPO, WORK  # noqa: F401,E402 (sets sys.path)
import sys
import numpy as np
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression
from harness import C, SHIFTS, train_shifts, feats, unit, cot_costs, ATCEstimator, stratified_halves, TemperatureScaler
TEST = ['clean', 'white_0db', 'pink_0db', 'gain_-20db', 'reverb_0.5s', 'resample_8k+pink_10db', '44k_standin+gain_-20db']
alpha = float(sys.argv[1]); n_splits = int(sys.argv[2]) if len(sys.argv) > 2 else 10
def run(name):
    y = C[name]['y']; outs = C[name]['outs']; K = 50
    E = {s: unit(outs[s]['embeddings'].astype(np.float64)) for s in SHIFTS}
    errs = {}
    for r in range(n_splits):
        a, b = stratified_halves(y, r)
        for A, B0 in ((a, b), (b, a)):
            rng = np.random.default_rng(1000 + r)
            w = rng.dirichlet(np.full(K, alpha))[y[B0]]
            if alpha == 0:   # control: exactly 2 clips per class (no label shift at all)
                B = np.sort(np.concatenate([rng.choice(B0[y[B0] == k], 2, replace=False) for k in range(K)]))
            else:
                B = np.sort(rng.choice(B0, 100, replace=False, p=w / w.sum()))
            zc = outs['clean']['logits'][A]; T = TemperatureScaler().fit(zc, y[A]).temperature_
            pA = softmax(zc / T, 1); cA = pA.argmax(1) == y[A]
            atc = ATCEstimator('max_confidence').fit(pA, y[A])
            cs = np.sort(cot_costs(pA, y[A], K))[::-1]; t_cot = cs[int(round((1 - cA.mean()) * len(cs)))]
            bank = E['clean'][A]
            FA = {}; corrA = {}
            for s in SHIFTS:
                FA[s], _, pa = feats(outs[s]['logits'][A], T, E[s][A], bank, np.arange(len(A)), len(A) / K); corrA[s] = pa == y[A]
            for s in TEST:
                zB = outs[s]['logits'][B]; pB = softmax(zB / T, 1); true = (pB.argmax(1) == y[B]).mean()
                FB, _, _ = feats(zB, T, E[s][B], bank, None, len(B) / K)
                costB = cot_costs(np.repeat(pB, 2, 0), y[A], K)
                tr = train_shifts(s); X = np.vstack([FA[u] for u in tr]); Y = np.concatenate([corrA[u] for u in tr])
                mu, sd = X.mean(0), X.std(0) + 1e-9
                lr = LogisticRegression(max_iter=500).fit((X - mu) / sd, Y)
                for m, v in (('atc_mc', atc.point(pB)), ('cott', 1 - np.mean(costB > t_cot)),
                             ('lr[inst+crowd]', lr.predict_proba((FB - mu) / sd)[:, 1].mean())):
                    errs.setdefault(m, {}).setdefault(s, []).append(v - true)
    return {m: {s: np.mean(v) for s, v in d.items()} for m, d in errs.items()}
res = {k: run(k) for k in ['S', 'R1', 'R2', 'R3', 'R4', 'R5']}
for t, keys in (('S', ['S']), ('R', ['R1', 'R2', 'R3', 'R4', 'R5'])):
    print(f'model {t}, Dirichlet alpha={alpha}, B = 100 clips')
    for m in res['S']:
        print(f'  {m:<16}' + ''.join(f'{s[:14]:>15}{np.mean([res[k][m][s] for k in keys])*100:+5.1f}' for s in TEST))
