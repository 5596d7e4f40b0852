using System.Diagnostics;
using MathNet.Numerics.LinearAlgebra;
using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>Options of <see cref="Lanczos"/>. Convergence as in DESIGN.md §4: every wanted Ritz pair has ‖Av − θv‖ ≤ tol·max(|θ|, ε).</summary>
public sealed record LanczosOptions
{
    /// <summary>Number of eigenpairs wanted.</summary>
    public int K { get; init; } = 1;
    public EigenTarget Target { get; init; } = EigenTarget.Largest;
    /// <summary>Relative residual tolerance. 1e-3 gives eigenvalues to about 1e-6 relative (the error is about residual²/gap).</summary>
    public double Tolerance { get; init; } = 1e-3;
    /// <summary>ε of the criterion, relative to the largest |Ritz value| (so eigenvalues near zero can converge).</summary>
    public double ZeroThreshold { get; init; } = 1e-6;
    /// <summary>Budget of operator products (not counting verification and the multiplicity check's own budget share).</summary>
    public long MaxProducts { get; init; } = 1000;
    /// <summary>Block size b: b vectors per step, applied as one block product (shared forward passes for the Hessian). 1 = classic Lanczos.</summary>
    public int BlockSize { get; init; } = 1;
    public long Seed { get; init; }
    public bool ReturnVectors { get; init; }
    /// <summary>Recompute each residual with an explicit product at the end (k extra products).</summary>
    public bool VerifyResiduals { get; init; } = true;
    /// <summary>
    /// After convergence, run Lanczos again orthogonal to the found vectors to catch copies of repeated eigenvalues,
    /// which a single Krylov space cannot contain. Null: when K ≥ 2.
    /// </summary>
    public bool? CheckMultiplicity { get; init; }
    /// <summary>Vectors (rows [l, n]) the Krylov space is kept orthogonal to (deflation).</summary>
    public Tensor? Locked { get; init; }
    public IProgress<EstimatorProgress>? Progress { get; init; }
    public CancellationToken Cancellation { get; init; }
}

/// <summary>
/// Block Lanczos with full reorthogonalization (twice, classical Gram-Schmidt) against the whole basis; basis and
/// tridiagonal bookkeeping in float64 whatever the operator's dtype (DESIGN.md §3, §4). Rank-deficient blocks (an
/// exhausted invariant subspace) are refilled with random vectors orthogonal to the basis, so the solver never stalls.
/// </summary>
public static class Lanczos
{
    public static Eigenpairs Compute(ICurvatureOperator op, LanczosOptions? options = null)
    {
        var o = options ?? new LanczosOptions();
        long n = op.Size;
        if (o.K < 1) throw new ValleyException($"Lanczos: k must be at least 1, got {o.K}");
        if (o.K > n) throw new ValleyException($"Lanczos: k = {o.K} is larger than the operator's size {n}");
        if (!(o.Tolerance > 0)) throw new ValleyException($"Lanczos: tolerance must be positive, got {o.Tolerance}");
        if (o.BlockSize < 1) throw new ValleyException($"Lanczos: block size must be at least 1, got {o.BlockSize}");
        if (o.MaxProducts < Math.Min(n, o.K + 1)) throw new ValleyException($"Lanczos: max products {o.MaxProducts} is too small for k = {o.K}");
        // The basis grows to at most min(n, budget) rows of n float64 values; it doubles as it grows, so the old and the new
        // one coexist for a moment. Refused up front when that cannot fit, instead of failing after hours.
        double rows = Math.Min(n, (double)o.MaxProducts + o.K + o.BlockSize);
        MachineLimits.EnsureMemory((Math.Min(n, 2 * rows) + rows) * n * sizeof(double), $"Lanczos with a budget of {o.MaxProducts} products on {n} parameters");
        var sw = Stopwatch.StartNew();
        long start = op.Products;

        var result = Run(op, o, start);
        bool check = o.CheckMultiplicity ?? o.K >= 2;
        var values = result.Values.ToList();
        var vectors = result.Vectors!;
        int extraIterations = 0;
        if (check && result.Converged && o.K < n - (o.Locked?.shape[0] ?? 0))
        {
            // Look for a missed copy of a repeated eigenvalue: the best eigenvalue orthogonal to what was found.
            for (int round = 0; round < o.K; round++)
            {
                long left = o.MaxProducts - (op.Products - start);
                if (left < 2) break;
                var locked = o.Locked is null ? vectors : cat([o.Locked, vectors], 0);
                if (locked.shape[0] >= n) break;
                var probe = Run(op, o with { K = 1, Locked = locked, MaxProducts = left, Seed = o.Seed + 1000 + round }, start);
                extraIterations += probe.Iterations;
                double kth = values[^1];
                double margin = o.Tolerance * Math.Max(Math.Abs(kth), 1e-12) + probe.Residuals[0];
                if (!probe.Converged || !SpectrumMath.Better(probe.Values[0], kth, o.Target, margin)) break;
                values.Add(probe.Values[0]);
                vectors = cat([vectors, probe.Vectors!], 0);
                var order = SpectrumMath.Wanted(values.ToArray(), o.K, o.Target);
                values = order.Select(i => values[i]).ToList();
                vectors = vectors.index_select(0, Data.OwnedTensor.From(order.Select(i => (long)i).ToArray()));
            }
        }

        double[] residuals = result.Residuals;
        bool verified = false;
        if (o.VerifyResiduals)
        {
            residuals = ResidualNorms(op, values.ToArray(), vectors);
            verified = true;
        }
        else if (values.Count != result.Values.Length || !values.SequenceEqual(result.Values))
            residuals = ResidualNorms(op, values.ToArray(), vectors);
        double normEst = Math.Max(result.NormEstimate, values.Max(Math.Abs));
        bool converged = result.Converged && residuals.Select((r, i) => r <= Math.Max(o.Tolerance * Math.Max(Math.Abs(values[i]), o.ZeroThreshold * normEst), 1e-300) * 1.5 || !verified).All(x => x);
        return new Eigenpairs
        {
            Method = o.BlockSize == 1 ? "lanczos" : $"block-lanczos(b={o.BlockSize})",
            Target = o.Target,
            Values = values.ToArray(),
            Residuals = residuals,
            ResidualsVerified = verified,
            Products = op.Products - start,
            Iterations = result.Iterations + extraIterations,
            Converged = converged,
            Tolerance = o.Tolerance,
            Seconds = sw.Elapsed.TotalSeconds,
            Vectors = o.ReturnVectors ? vectors : null,
        };
    }

    /// <summary>‖A v_i − θ_i v_i‖ for rows v_i, with one block product.</summary>
    public static double[] ResidualNorms(ICurvatureOperator op, double[] values, Tensor rows)
    {
        using var scope = NewDisposeScope();
        var Av = SpectrumMath.Apply(op, rows.t(), "Lanczos").t();
        var theta = Data.OwnedTensor.From(values).to(rows.device).unsqueeze(1);
        return (Av - theta * rows).norm(1).cpu().data<double>().ToArray();
    }

    /// <summary>One Lanczos run: values best-first, estimated residuals, Ritz vectors (rows, float64).</summary>
    static (double[] Values, double[] Residuals, Tensor? Vectors, bool Converged, int Iterations, double NormEstimate) Run(ICurvatureOperator op, LanczosOptions o, long globalStart)
    {
        long n = op.Size;
        long lockedCount = o.Locked?.shape[0] ?? 0;
        long space = n - lockedCount;
        int b = (int)Math.Min(o.BlockSize, space);
        var gen = new Generator((ulong)o.Seed);
        using var proc = new BlockLanczosProcess(op, b, o.Locked, gen);
        proc.Start(randn([b, n], dtype: ScalarType.Float64, generator: gen));
        double[] theta = [];
        Matrix<double>? S = null;
        int[] wanted = [];
        double[] res = [];
        bool converged = false;
        int iter = 0;
        while (true)
        {
            o.Cancellation.ThrowIfCancellationRequested();
            proc.Step();
            iter++;
            int m = proc.TridiagonalSize;
            bool exhausted = m >= space;
            bool budget = op.Products - globalStart + b > o.MaxProducts;
            if (m < o.K && !exhausted && !budget) continue;
            if (m > 200 && iter % 5 != 0 && !exhausted && !budget) continue;
            (theta, S) = SpectrumMath.SymmetricEigen(proc.Tridiagonal());
            wanted = SpectrumMath.Wanted(theta, Math.Min(o.K, m), o.Target);
            var lastB = proc.LastCoupling();
            double normEst = theta.Max(Math.Abs);
            res = wanted.Select(i =>
            {
                var sLast = S.Column(i).SubVector(m - b, b);
                return exhausted ? 0.0 : (lastB * sLast).L2Norm();
            }).ToArray();
            double worst = wanted.Select((i, j) => res[j] / Math.Max(Math.Abs(theta[i]), o.ZeroThreshold * normEst + 1e-300)).DefaultIfEmpty(double.PositiveInfinity).Max();
            o.Progress?.Report(new EstimatorProgress("lanczos", op.Products - globalStart, o.MaxProducts, worst));
            converged = wanted.Length == o.K && worst <= o.Tolerance;
            if (converged || exhausted || budget) break;
        }
        var basis = proc.Basis(proc.TridiagonalSize);
        var coeffs = Matrix<double>.Build.Dense(proc.TridiagonalSize, wanted.Length, (r, c) => S![r, wanted[c]]);
        var ct = Data.OwnedTensor.From(coeffs.ToColumnMajorArray(), wanted.Length, proc.TridiagonalSize).to(basis.device);
        var vectors = ct.matmul(basis);
        vectors = vectors / vectors.norm(1, keepdim: true);
        return (wanted.Select(i => theta[i]).ToArray(), res, vectors.DetachFromDisposeScope(), converged || proc.TridiagonalSize >= space, iter, theta.Max(Math.Abs));
    }
}

/// <summary>
/// The state of one block Lanczos process: an orthonormal basis (rows, float64, grown in chunks), the diagonal
/// blocks A_j = Q_jᵀ A Q_j and the couplings B_j of A Q_j = Q_{j-1} B_{j-1}ᵀ + Q_j A_j + Q_{j+1} B_j.
/// </summary>
internal sealed class BlockLanczosProcess : IDisposable
{
    readonly ICurvatureOperator _op;
    readonly int _b;
    readonly Tensor? _locked;
    readonly Generator _gen;
    readonly long _n;
    Tensor _basis;          // [capacity, n] float64, rows are orthonormal vectors
    long _rows;             // rows in use (T size + b for the next block)
    readonly List<double[,]> _diag = [];
    readonly List<double[,]> _coupling = [];
    double _normEst;

    public BlockLanczosProcess(ICurvatureOperator op, int blockSize, Tensor? locked, Generator gen)
    {
        _op = op;
        _b = blockSize;
        _locked = locked?.to(ScalarType.Float64).DetachFromDisposeScope();
        _gen = gen;
        _n = op.Size;
        _basis = zeros([Math.Min(_n, 32L * blockSize), _n], dtype: ScalarType.Float64, device: op.Device).DetachFromDisposeScope();
    }

    /// <summary>Size of the block tridiagonal matrix built so far.</summary>
    public int TridiagonalSize => _diag.Count * _b;

    public Tensor Basis(long rows) => _basis.narrow(0, 0, rows);

    public void Start(Tensor x0)
    {
        using var scope = NewDisposeScope();
        var x = x0.to(ScalarType.Float64).to(_op.Device);
        var q = Orthonormalize(x);
        Append(q);
    }

    public void Step()
    {
        using var scope = NewDisposeScope();
        long j0 = _rows - _b;
        var Q = _basis.narrow(0, j0, _b);
        var W = SpectrumMath.Apply(_op, Q.t(), "Lanczos").t().contiguous(); // rows: A q_i
        var A = Q.matmul(W.t());
        A = (A + A.t()) / 2;
        _diag.Add(SpectrumMath.ToArray(A));
        _normEst = Math.Max(_normEst, A.abs().max().ToDouble());
        // Full reorthogonalization against the whole basis (and the locked vectors), twice.
        var basis = _basis.narrow(0, 0, _rows);
        // Full reorthogonalization: classical Gram-Schmidt, repeated when the DGKS criterion says rounding may have left a component.
        var before = W.norm(1);
        for (int pass = 0; pass < 2; pass++)
        {
            W = W - basis.matmul(W.t()).t().matmul(basis);
            if (_locked is not null) W = W - _locked.matmul(W.t()).t().matmul(_locked);
            var after = W.norm(1);
            if (!(after < before * 0.7071).any().ToBoolean()) break;
            before = after;
        }
        // W = R ᵀ Q_next in row form: QR of Wᵀ [n, b].
        var (qn, r) = linalg.qr(W.t());
        var R = SpectrumMath.ToArray(r);
        var next = qn.t().contiguous();
        double threshold = 1e-10 * Math.Max(_normEst, 1e-300);
        bool space = _rows + _locked_count() < _n;
        for (int i = 0; i < _b; i++)
        {
            if (Math.Abs(R[i, i]) > threshold) continue;
            // Deflation: an exhausted direction. Zero its coupling and continue with a fresh random direction.
            for (int c = 0; c < _b; c++) R[i, c] = 0;
            if (!space) continue;
            var fresh = randn([1, _n], dtype: ScalarType.Float64, generator: _gen).to(_op.Device);
            var others = cat([basis, next.narrow(0, 0, i), next.narrow(0, i + 1, _b - i - 1)], 0);
            next[i] = Orthonormalize(fresh, others)[0];
        }
        _coupling.Add(R);
        if (_rows + _b <= _n) Append(next);
    }

    long _locked_count() => _locked?.shape[0] ?? 0;

    /// <summary>B_j of the last step (b×b): the residual coupling to the next block.</summary>
    public Matrix<double> LastCoupling() => Matrix<double>.Build.DenseOfArray(_coupling[^1]);

    /// <summary>The block tridiagonal T = Qᵀ A Q of size (#steps · b).</summary>
    public double[,] Tridiagonal()
    {
        int m = TridiagonalSize;
        var t = new double[m, m];
        for (int j = 0; j < _diag.Count; j++)
        {
            int o = j * _b;
            for (int r = 0; r < _b; r++)
                for (int c = 0; c < _b; c++)
                    t[o + r, o + c] = _diag[j][r, c];
            if (j + 1 < _diag.Count)
            {
                // A Q_j has Q_{j+1} B_j: T[j+1 block, j block] = B_j, and its transpose above the diagonal.
                for (int r = 0; r < _b; r++)
                    for (int c = 0; c < _b; c++)
                    {
                        t[o + _b + r, o + c] = _coupling[j][r, c];
                        t[o + c, o + _b + r] = _coupling[j][r, c];
                    }
            }
        }
        return t;
    }

    Tensor Orthonormalize(Tensor x, Tensor? against = null)
    {
        var basis = against ?? (_rows > 0 ? _basis.narrow(0, 0, _rows) : null);
        for (int pass = 0; pass < 2; pass++)
        {
            if (basis is not null && basis.shape[0] > 0) x = x - basis.matmul(x.t()).t().matmul(basis);
            if (_locked is not null) x = x - _locked.matmul(x.t()).t().matmul(_locked);
        }
        var (q, _) = linalg.qr(x.t());
        return q.t().contiguous();
    }

    void Append(Tensor rows)
    {
        long k = rows.shape[0];
        if (_rows + k > _basis.shape[0])
        {
            long cap = Math.Min(_n, Math.Max(_basis.shape[0] * 2, _rows + k));
            var bigger = zeros([cap, _n], dtype: ScalarType.Float64, device: _basis.device);
            bigger.narrow(0, 0, _rows).copy_(_basis.narrow(0, 0, _rows));
            _basis.Dispose();
            _basis = bigger.DetachFromDisposeScope();
        }
        _basis.narrow(0, _rows, k).copy_(rows);
        _rows += k;
    }

    public void Dispose()
    {
        _basis.Dispose();
        _locked?.Dispose();
    }
}
