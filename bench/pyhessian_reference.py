"""PyTorch reference of PyHessian's algorithms (Yao et al. 2020), written for Valley's benchmark.

Reads the model weights (PyTorch state_dict of nn.Sequential(Linear(784,128), Tanh, Linear(128,64), Tanh, Linear(64,10)))
and the data (raw float32 inputs [N, 784], int64 labels [N]) that bench/Valley.Bench wrote, and times PyHessian's
algorithms with PyHessian's defaults. With BATCHES = 1, the whole data as one batch (PyHessian's single-batch mode: the
gradient graph is built once and every product is one double-backward pass); with BATCHES > 1, PyHessian's dataloader
mode (full_dataset): every product runs each batch's forward pass, graph-building backward pass and double backward, and
weights each batch by its size, as PyHessian's dataloader_hv_product does:
  power iteration (maxIter 100, tol 1e-3) for top_n = 1 and 5, Hutchinson trace (maxIter 100, tol 1e-3),
  SLQ density (iter 100, n_v 1).
With MODE "round" (the speed benchmark's alternating rounds): one product untimed first (PyTorch's first-call costs),
then each of top-1, top-5, the trace and the density once, with seed SEED (PyHessian itself does not seed: each round
draws another start, as a user's runs would); without the residual-stopped variants.
Prints one JSON object. Run with Debian's python3-torch:  /usr/bin/python3 bench/pyhessian_reference.py DIR THREADS [BATCHES [MODE SEED]]
"""
import json, sys, time
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

d, threads = sys.argv[1], int(sys.argv[2])
batches = int(sys.argv[3]) if len(sys.argv) > 3 else 1
one_round = len(sys.argv) > 4 and sys.argv[4] == "round"
round_seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
torch.set_num_threads(threads)
torch.manual_seed(0)
meta = json.load(open(f"{d}/meta.json"))
n, feats = meta["examples"], meta["features"]
X = torch.from_numpy(np.fromfile(f"{d}/x.f32", dtype=np.float32).reshape(n, feats))
Y = torch.from_numpy(np.fromfile(f"{d}/y.i64", dtype=np.int64))
model = nn.Sequential(nn.Linear(784, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 10))
model.load_state_dict(torch.load(f"{d}/model.pt"))
model.eval()
params = [p for p in model.parameters() if p.requires_grad]

products = 0
def setup():
    if batches > 1: return None  # dataloader mode: nothing is kept between products
    loss = F.cross_entropy(model(X), Y)
    return torch.autograd.grad(loss, params, create_graph=True)

def hvp(gradsH, v):
    global products
    products += 1
    if gradsH is not None:
        return torch.autograd.grad(gradsH, params, grad_outputs=v, only_inputs=True, retain_graph=True)
    # PyHessian's dataloader_hv_product: per batch, forward, backward(create_graph=True), double backward; weighted by size.
    THv = [torch.zeros(p.size()) for p in params]
    for xb, yb in zip(X.chunk(batches), Y.chunk(batches)):
        model.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward(create_graph=True)
        gH = [p.grad + 0. if p.grad is not None else 0. for p in params]  # a copy: zero_grad() below detaches p.grad in place (as get_params_grad does)
        model.zero_grad()
        Hv = torch.autograd.grad(gH, params, grad_outputs=v, only_inputs=True, retain_graph=False)
        THv = [t + h * float(xb.size(0)) + 0. for t, h in zip(THv, Hv)]
    return [t / float(n) for t in THv]

def group_product(xs, ys): return sum(torch.sum(x * y) for (x, y) in zip(xs, ys))
def group_add(params_, update, alpha=1): return [p.data.add_(u * alpha) for p, u in zip(params_, update)]
def normalization(v):
    s = torch.sqrt(group_product(v, v)).cpu().item()
    return [vi / (s + 1e-6) for vi in v]
def orthnormal(w, v_list):
    for v in v_list: w = group_add(w, v, alpha=-group_product(w, v))
    return normalization(w)

def eigenvalues(gradsH, maxIter=100, tol=1e-3, top_n=1):
    eigenvalues, eigenvectors = [], []
    computed_dim = 0
    while computed_dim < top_n:
        eigenvalue = None
        v = normalization([torch.randn(p.size()) for p in params])
        for i in range(maxIter):
            v = orthnormal(v, eigenvectors)
            Hv = hvp(gradsH, v)
            tmp = group_product(Hv, v).cpu().item()
            v = normalization(Hv)
            if eigenvalue is None: eigenvalue = tmp
            elif abs(eigenvalue - tmp) / (abs(eigenvalue) + 1e-6) < tol: break
            else: eigenvalue = tmp
        eigenvalues.append(eigenvalue); eigenvectors.append(v); computed_dim += 1
    return eigenvalues, eigenvectors

def eigenvalues_to_residual(gradsH, top_n=1, target=1e-3, maxIter=2000):
    """PyHessian's power iteration, stopped instead when ‖Hv − θv‖ ≤ target·|θ| (read off the same product)."""
    eigenvalues, eigenvectors = [], []
    for e in range(top_n):
        v = normalization([torch.randn(p.size()) for p in params])
        for i in range(maxIter):
            v = orthnormal(v, eigenvectors)
            Hv = hvp(gradsH, v)
            tmp = group_product(Hv, v).cpu().item()
            res = torch.sqrt(sum(torch.sum((h - tmp * x) ** 2) for h, x in zip(Hv, v))).item()
            done = res <= target * abs(tmp)
            if not done: v = normalization(Hv)
            if done: break
        eigenvalues.append(tmp); eigenvectors.append(v)
    return eigenvalues, eigenvectors

def trace(gradsH, maxIter=100, tol=1e-3):
    trace_vhv, tr = [], 0.
    for i in range(maxIter):
        v = [torch.randint_like(p, high=2) for p in params]
        for v_i in v: v_i[v_i == 0] = -1
        Hv = hvp(gradsH, v)
        trace_vhv.append(group_product(Hv, v).cpu().item())
        if abs(np.mean(trace_vhv) - tr) / (abs(tr) + 1e-6) < tol: return trace_vhv
        tr = np.mean(trace_vhv)
    return trace_vhv

def density(gradsH, iter=100, n_v=1):
    eigen_list_full, weight_list_full = [], []
    for k in range(n_v):
        v = [torch.randint_like(p, high=2) for p in params]
        for v_i in v: v_i[v_i == 0] = -1
        v = normalization(v)
        v_list, alpha_list, beta_list = [v], [], []
        for i in range(iter):
            if i == 0:
                w_prime = hvp(gradsH, v)
                alpha = group_product(w_prime, v); alpha_list.append(alpha.cpu().item())
                w = group_add(list(w_prime), v, alpha=-alpha)
            else:
                beta = torch.sqrt(group_product(w, w)); beta_list.append(beta.cpu().item())
                if beta_list[-1] != 0.: v = orthnormal(w, v_list)
                else: v = orthnormal([torch.randn(p.size()) for p in params], v_list)
                v_list.append(v)
                w_prime = hvp(gradsH, v)
                alpha = group_product(w_prime, v); alpha_list.append(alpha.cpu().item())
                w_tmp = group_add(list(w_prime), v, alpha=-alpha)
                w = group_add(w_tmp, v_list[-2], alpha=-beta)
        T = torch.zeros(iter, iter)
        for i in range(len(alpha_list)):
            T[i, i] = alpha_list[i]
            if i < len(alpha_list) - 1:
                T[i + 1, i] = beta_list[i]; T[i, i + 1] = beta_list[i]
        a_, b_ = torch.linalg.eigh(T)
        eigen_list_full.append(a_.tolist()); weight_list_full.append((b_[0, :] ** 2).tolist())
    return eigen_list_full, weight_list_full

def residual(gradsH, lam, v):
    global products
    before = products
    Hv = hvp(gradsH, v)
    products = before  # verification is not counted
    r = torch.sqrt(sum(torch.sum((h - lam * x) ** 2) for h, x in zip(Hv, v))).item()
    nv = torch.sqrt(group_product(v, v)).item()
    return r / nv

def timed(name, fn, reps, seed=0):
    global products
    times, result, used = [], None, 0
    for r in range(reps):
        torch.manual_seed(seed + r)
        products = 0
        t = time.perf_counter()
        gradsH = setup()
        result = fn(gradsH)
        times.append(time.perf_counter() - t)
        used = products
    return {"seconds": sorted(times)[len(times) // 2], "products": used}, result, gradsH

def blas_library():
    # Debian's torch calls whichever libblas.so.3 the alternatives system points at; the reference BLAS (netlib) is ~40x
    # slower on this model's matrix products than OpenBLAS, which would make every ratio meaningless. Report the file.
    torch.randn(64, 64) @ torch.randn(64, 64)
    libs = {line.split()[-1] for line in open("/proc/self/maps") if "blas" in line.lower() and line.split()[-1].startswith("/")}
    return sorted(libs)

out = {"torch": torch.__version__, "threads": threads, "batches": batches, "blas": blas_library()}
if one_round:
    # Untimed: every algorithm once in short, so that PyTorch's first-call costs (and the heap's growth) are not timed,
    # as Valley's untimed round before its timed ones.
    g = setup()
    eigenvalues(g, maxIter=2, top_n=1); trace(g, maxIter=2); density(g, iter=3)
    products = 0
    reps = 1
    r, (vals, vecs), g = timed("top1", lambda g: eigenvalues(g, top_n=1), reps, round_seed)
    r["values"] = vals; out["power_top1"] = r
    r, (vals, vecs), g = timed("top5", lambda g: eigenvalues(g, top_n=5), reps, round_seed)
    r["values"] = vals; out["power_top5"] = r
    r, samples, g = timed("trace", lambda g: trace(g), reps, round_seed)
    r["trace"] = float(np.mean(samples)); r["standard_error"] = float(np.std(samples, ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else None
    out["hutchinson"] = r
    r, (eig, w), g = timed("density", lambda g: density(g), reps, round_seed)
    r["lambda_max"] = max(eig[0]); r["lambda_min"] = min(eig[0]); out["slq_1x100"] = r
    print(json.dumps(out))
    sys.exit(0)
r, (vals, vecs), g = timed("top1", lambda g: eigenvalues(g, top_n=1), 3)
r["values"] = vals; r["relative_residuals"] = [residual(g, l, v) / abs(l) for l, v in zip(vals, vecs)]; out["power_top1"] = r
r, (vals, vecs), g = timed("top5", lambda g: eigenvalues(g, top_n=5), 1)
r["values"] = vals; r["relative_residuals"] = [residual(g, l, v) / abs(l) for l, v in zip(vals, vecs)]; out["power_top5"] = r
r, (vals, vecs), g = timed("top1res", lambda g: eigenvalues_to_residual(g, top_n=1), 3)
r["values"] = vals; r["relative_residuals"] = [residual(g, l, v) / abs(l) for l, v in zip(vals, vecs)]; out["power_top1_residual"] = r
if batches == 1:  # thousands of products: minutes even with the cached graph
    r, (vals, vecs), g = timed("top5res", lambda g: eigenvalues_to_residual(g, top_n=5), 1)
    r["values"] = vals; r["relative_residuals"] = [residual(g, l, v) / abs(l) for l, v in zip(vals, vecs)]; out["power_top5_residual"] = r
r, samples, g = timed("trace", lambda g: trace(g), 1)
r["trace"] = float(np.mean(samples)); r["standard_error"] = float(np.std(samples, ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else None
out["hutchinson"] = r
r, (eig, w), g = timed("density", lambda g: density(g), 3)
r["lambda_max"] = max(eig[0]); r["lambda_min"] = min(eig[0]); out["slq_1x100"] = r
print(json.dumps(out))
