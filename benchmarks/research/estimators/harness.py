"""Label-free accuracy estimators under the crossfit_errors half-split protocol (tympan.stats.performance).
Per model: 20 seeded class-stratified splits (stratified_halves, seeds 0..19), both ways round; T fitted on clean A
(TemperatureScaler), every estimator fitted on A only (clean A; plus, for 'lofo' methods, A under cached shifts whose
family is disjoint from the test shift's families), accuracy estimated on shifted B. bias = mean(est - true)."""
from _paths import DATA, REPO, WORK  # noqa: F401,E402 (sets sys.path)
import sys, pickle, time
import numpy as np
from scipy.special import softmax, logsumexp
from scipy.optimize import linear_sum_assignment
from sklearn.linear_model import LogisticRegression
from tympan.stats.performance import stratified_halves, atc_threshold, ATCEstimator
from tympan.stats.temperature import TemperatureScaler

C = pickle.load(open(WORK / 'cache.pkl', 'rb'))
FAMMAP = {'white_noise': 'white', 'pink_noise': 'pink', 'gain': 'gain', 'lowpass': 'band', 'telephone': 'band',
          'resample': 'band', 'codec': 'codec', 'clipping': 'clip', 'time_shift': 'tshift', 'high_band': 'highband',
          'reverb': 'reverb'}
FAMS = {s: frozenset(FAMMAP[st[0]] for st in steps) for s, (steps, _) in C['conditions'].items()}
SHIFTS = list(C['conditions'])

def train_shifts(test):
    F = FAMS[test]
    return [s for s in SHIFTS if not (FAMS[s] & F)]   # includes clean (empty family)

def knn_dist(Q, bank, k=5, exclude=None):
    d = 1 - Q @ bank.T
    if exclude is not None:
        d[np.arange(len(Q)), exclude] = np.inf
    return np.sort(d, axis=1)[:, :k].mean(1)

def unit(e):
    return e / np.linalg.norm(e, axis=1, keepdims=True)

def cot_costs(p, ysrc, K):
    """Confidence optimal transport (Lu et al., NeurIPS 2023): match target softmax vectors to source one-hot
    labels (equal counts), cost ||p - e_y||_inf; returns matched costs."""
    onehot = np.eye(K)[ysrc]
    cost = np.abs(p[:, None, :] - onehot[None, :, :]).max(-1)
    r, c = linear_sum_assignment(cost)
    return cost[r, c]

def feats(z, T, emb_u, bankA, excl, counts_ref):
    """Per-clip features (label-free)."""
    zt = z / T
    p = softmax(zt, 1)
    ps = np.sort(p, 1)
    conf = ps[:, -1]
    lp = zt - logsumexp(zt, 1, keepdims=True)
    top = lp.max(1)
    rest = logsumexp(np.where(lp == top[:, None], -np.inf, lp), 1)
    lconf = top - rest      # log(conf / (1 - conf)), stable
    marg = ps[:, -1] - ps[:, -2]
    ent = -(p * np.log(np.clip(p, 1e-300, 1))).sum(1)
    lse = logsumexp(zt, 1)
    kd = knn_dist(emb_u, bankA, 5, excl)
    pred = p.argmax(1)
    cnt = np.bincount(pred, minlength=z.shape[1])
    crowd = np.log(cnt[pred] / counts_ref)          # how over-represented the predicted class is in this batch
    return np.column_stack([lconf, marg, ent, lse, kd, crowd]), conf, pred

FEATSETS = {'conf+knn+lse': [0, 3, 4], 'conf+marg+knn': [0, 1, 4], 'inst': [0, 1, 2, 3, 4], 'inst+crowd': [0, 1, 2, 3, 4, 5],
            'conf+crowd': [0, 5], 'conf+knn': [0, 4]}
#: feature sets of the correctness models per run: '' (res_n*.pkl) and '2' (res2_n*.pkl, the k-NN / energy ones)
RUNS = {'': ('inst', 'inst+crowd', 'conf+crowd'), '2': ('conf+knn', 'conf+knn+lse', 'conf+marg+knn')}

def run_model(name, n_splits=20, methods_lr=('inst', 'inst+crowd', 'conf+crowd')):
    y = C[name]['y']; outs = C[name]['outs']; K = outs['clean']['logits'].shape[1]
    E = {s: unit(outs[s]['embeddings'].astype(np.float64)) for s in SHIFTS}
    errs = {}; truth = {s: [] for s in SHIFTS}
    def add(m, s, v):
        errs.setdefault(m, {x: [] for x in SHIFTS})[s].append(v)
    for r in range(n_splits):
        a, b = stratified_halves(y, r)
        for A, B in ((a, b), (b, a)):
            zc = outs['clean']['logits'][A]
            T = TemperatureScaler().fit(zc, y[A]).temperature_
            pA = softmax(zc / T, 1); cA = pA.argmax(1) == y[A]
            accA = cA.mean()
            bank = E['clean'][A]
            counts_ref = len(A) / K
            # features of A under every shift (self excluded from the kNN bank), B under every shift
            FA, FB, corrA, confB, predB = {}, {}, {}, {}, {}
            for s in SHIFTS:
                FA[s], _, pa = feats(outs[s]['logits'][A], T, E[s][A], bank, np.arange(len(A)), counts_ref)
                corrA[s] = pa == y[A]
                FB[s], confB[s], predB[s] = feats(outs[s]['logits'][B], T, E[s][B], bank, None, counts_ref)
            # baseline ATC-MC (repo's estimator)
            atc = ATCEstimator('max_confidence').fit(pA, y[A])
            t_lse = atc_threshold(FA['clean'][:, 3], cA)
            t_negknn = atc_threshold(-FA['clean'][:, 4], cA)
            # COTT threshold on clean A: match A's probs to A's labels
            costA = cot_costs(pA, y[A], K)
            errA = 1 - accA
            cs = np.sort(costA)[::-1]
            kerr = int(round(errA * len(cs)))
            t_cot = cs[kerr] if kerr < len(cs) else -np.inf   # share of costs > t equals error on A
            # LOFO-fitted models cache per family set
            lr_cache = {}
            for s in SHIFTS:
                zB = outs[s]['logits'][B]; pB = softmax(zB / T, 1)
                true = float((pB.argmax(1) == y[B]).mean()); truth[s].append(true)
                add('atc_mc', s, atc.point(pB) - true)
                add('atc_lse', s, float(np.mean(FB[s][:, 3] >= t_lse)) - true)
                add('atc_negknn', s, float(np.mean(-FB[s][:, 4] >= t_negknn)) - true)
                costB = cot_costs(pB, y[A], K)   # source label marginal = A's labels (balanced)
                add('cot', s, 1 - costB.mean() - true)
                add('cott', s, 1 - float(np.mean(costB > t_cot)) - true)
                tr = tuple(train_shifts(s))
                if tr not in lr_cache:
                    ent = {}
                    X = np.vstack([FA[u] for u in tr]); Y = np.concatenate([corrA[u] for u in tr])
                    for fs in methods_lr:
                        cols = FEATSETS[fs]
                        mu, sd = X[:, cols].mean(0), X[:, cols].std(0) + 1e-9
                        lr = LogisticRegression(C=1.0, max_iter=500).fit((X[:, cols] - mu) / sd, Y)
                        # ATC on the LR score with threshold fitted on pooled training shifts of A
                        sc = lr.decision_function((X[:, cols] - mu) / sd)
                        ent[fs] = (lr, mu, sd, cols, atc_threshold(sc, Y))
                    # ATC-MC with threshold fitted on pooled A over training shifts
                    ent['atcmc_pool'] = atc_threshold(X[:, 0], Y)
                    lr_cache[tr] = ent
                ent = lr_cache[tr]
                for fs in methods_lr:
                    lr, mu, sd, cols, t = ent[fs]
                    xb = (FB[s][:, cols] - mu) / sd
                    add(f'lr[{fs}]', s, float(lr.predict_proba(xb)[:, 1].mean()) - true)
                    add(f'lratc[{fs}]', s, float(np.mean(lr.decision_function(xb) >= t)) - true)
                add('atcmc_pool', s, float(np.mean(FB[s][:, 0] >= ent['atcmc_pool'])) - true)
    return {s: {'true': float(np.mean(truth[s])), 'bias': {m: float(np.mean(errs[m][s])) for m in errs},
                'mae': {m: float(np.mean(np.abs(errs[m][s]))) for m in errs}} for s in SHIFTS}

if __name__ == '__main__':
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    models = sys.argv[2].split(',') if len(sys.argv) > 2 else ['S', 'R1', 'R2', 'R3', 'R4', 'R5']
    run = sys.argv[3] if len(sys.argv) > 3 else ''
    res = {}
    for m in models:
        t0 = time.time(); res[m] = run_model(m, n, RUNS[run]); print(m, f'{time.time()-t0:.0f}s', flush=True)
        pickle.dump(res, open(WORK / f'res{run}_n{n}.pkl', 'wb'))
