using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>
/// Options of <see cref="XTrace"/>. With <see cref="RelativeStandardError"/> null it is the published fixed-budget
/// algorithm (Epperly, Tropp, Webber 2024): m = <see cref="MaxProducts"/> products, m/2 test vectors. With a target (the
/// default, as <see cref="HutchPlusPlusOptions"/>), it starts with <see cref="TestVectors"/> test vectors and adds
/// <see cref="BlockSize"/> more at a time until its error estimate reaches the target or the budget runs out.
/// </summary>
public sealed record XTraceOptions
{
    /// <summary>Budget of products; each test vector costs two (A ω and A q). Default 1000.</summary>
    public long MaxProducts { get; init; } = 1000;

    /// <summary>Stop when the error estimate ≤ this × |estimate|. Default 0.01. Null: spend the whole budget (the published algorithm).</summary>
    public double? RelativeStandardError { get; init; } = 0.01;

    /// <summary>
    /// Test vectors s of the first estimate (2s products), also the fewest the error estimate may stop at. Null (default):
    /// <see cref="XTrace.DefaultTestVectors"/> with a target, MaxProducts/2 without.
    /// </summary>
    public int? TestVectors { get; init; }

    /// <summary>Test vectors added each time the error is above the target (2 × this products). Default 10.</summary>
    public int BlockSize { get; init; } = 10;

    /// <summary>Seed of the test vectors.</summary>
    public long Seed { get; init; }
}

/// <summary>
/// XTrace (Epperly, Tropp, Webber 2024, "XTrace: making the most of every sample in stochastic trace estimation", SIAM J.
/// Matrix Anal. Appl. 45(1), Algorithm 1 with the normalization of §2.2): every one of s test vectors ω_i serves both as a
/// sketch vector and as a Hutchinson probe. For each i, Q_(i) is an orthonormal basis of A Ω without ω_i, and
/// t_i = tr(Q_(i)ᵀ A Q_(i)) + c_i · ω_iᵀ (I − Q_(i)Q_(i)ᵀ) A (I − Q_(i)Q_(i)ᵀ) ω_i; the estimate is the mean of the t_i,
/// exchangeable in the ω_i, and its error estimate the standard error of the t_i (their standard deviation / √s, eq. (2.6)).
/// The normalization c_i = (n − s + 1) / ‖(I − Q_(i)Q_(i)ᵀ) ω_i‖² makes the residual probe uniform on the sphere of its
/// subspace (Gaussian ω_i), the "improved" estimator of §2.2. All t_i come from one QR factorization Y = A Ω = Q R and
/// H = Qᵀ A Q by rank-one downdating (§2.1): Q_(i)Q_(i)ᵀ = QQᵀ − (Q s_i)(Q s_i)ᵀ with s_i the normalized i-th column of R⁻ᵀ.
/// A symmetric A gives Qᵀ A Ω = R and ω_iᵀ A ω_i = ω_iᵀ y_i, so 2s products make the whole estimate.
/// </summary>
public static class XTrace
{
    /// <summary>Test vectors of the first estimate with a target: 10 (20 products), as many as Hutch++'s default sketch.</summary>
    public const int DefaultTestVectors = 10;

    /// <summary>Estimates tr(A) within the budget: to the relative error asked for, or with the whole budget when there is no target.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="XTraceOptions"/>).</exception>
    public static TraceEstimate Estimate(ICurvatureOperator op, XTraceOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default)
    {
        var o = options ?? new XTraceOptions();
        if (o.RelativeStandardError is { } rse) Check.PositiveFinite(rse, nameof(o.RelativeStandardError));
        Check.AtLeast(o.MaxProducts, 4, nameof(o.MaxProducts));
        if (o.TestVectors is { } tv) Check.AtLeast(tv, 2, nameof(o.TestVectors));
        Check.AtLeast(o.BlockSize, 1, nameof(o.BlockSize));
        long n = op.Size;
        int sMax = (int)Math.Min(o.MaxProducts / 2, n);
        int s0 = Math.Min(o.TestVectors ?? (o.RelativeStandardError is null ? sMax : DefaultTestVectors), sMax);
        // Q [s, n] float64 grows to at most sMax rows (and is copied once as it grows).
        MachineLimits.EnsureMemory(2.0 * sMax * n * sizeof(double), $"XTrace with a budget of {o.MaxProducts} products on {n} parameters");
        var sw = Stopwatch.StartNew();
        var budget = new ProductBudget(op, o.MaxProducts, "XTrace");
        using var sketch = new Sketch(budget, n, op.Device, (ulong)o.Seed, op.DType == ScalarType.Float64 ? 1e-10 : 1e-5);
        sketch.Grow(s0);
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            var (estimate, se, exact) = sketch.Estimate();
            double relative = se / Math.Max(Math.Abs(estimate), 1e-300);
            progress?.Report(new EstimatorProgress("xtrace", budget.Used, budget.Max, double.IsNaN(relative) ? null : relative));
            bool reached = exact || o.RelativeStandardError is { } t && relative <= t;
            if (reached || sketch.Count >= sMax)
                return new TraceEstimate
                {
                    Method = "xtrace", Trace = estimate, StandardError = se, Probes = sketch.Count, Products = budget.Used,
                    Converged = reached || o.RelativeStandardError is null, Seconds = sw.Elapsed.TotalSeconds,
                    // A sketch that spans the range of A: its low-rank part is the whole trace (tr(QᵀAQ) would count noise directions, see ExactTrace).
                    LowRankTrace = exact ? estimate : sketch.LowRankTrace,
                    SketchSize = sketch.Count,
                };
            ct.ThrowIfCancellationRequested();
            sketch.Grow(Math.Min(o.BlockSize, sMax - sketch.Count));
        }
    }

    /// <summary>
    /// The growing sketch: Q (rows, on the operator's device), and the small matrices R (Y = QR, upper triangular),
    /// H = QᵀAQ and W = QᵀΩ (CPU, float64). Ω is never stored: each block of test vectors is regenerated from its own seed
    /// when a new block of Q needs its products with the old test vectors.
    /// </summary>
    internal sealed class Sketch(ProductBudget budget, long n, Device device, ulong seed, double rankTolerance) : IDisposable
    {
        Tensor _q = zeros([0, n], dtype: ScalarType.Float64, device: device).DetachFromDisposeScope();
        Tensor _r = zeros([0, 0], dtype: ScalarType.Float64).DetachFromDisposeScope();
        Tensor _h = zeros([0, 0], dtype: ScalarType.Float64).DetachFromDisposeScope();
        Tensor _w = zeros([0, 0], dtype: ScalarType.Float64).DetachFromDisposeScope();
        readonly List<double> _quadratic = [];  // ω_iᵀ A ω_i
        readonly List<double> _norm2 = [];      // ‖ω_i‖²
        readonly List<int> _blocks = [];        // sizes of the blocks of test vectors, in order

        public int Count => _quadratic.Count;

        /// <summary>For tests: Q (rows), R, H, W and the test vectors Ω (rows), which the estimate is made of.</summary>
        internal (Tensor Q, Tensor R, Tensor H, Tensor W, Tensor Omega) Parts() =>
            (_q, _r, _h, _w, cat(Enumerable.Range(0, _blocks.Count).Select(Omega).ToArray(), 0));

        /// <summary>tr(QᵀAQ) of the whole sketch.</summary>
        public double LowRankTrace => Count == 0 ? 0 : _h.trace().ToDouble();

        Tensor Omega(int block) =>
            randn([_blocks[block], n], dtype: ScalarType.Float64, generator: new Generator(seed * 1_000_003UL + (ulong)block)).to(device);

        /// <summary>Adds b test vectors: b products for Y = AΩ_new, b for A Q_new.</summary>
        public void Grow(int b)
        {
            using var scope = NewDisposeScope();
            _blocks.Add(b);
            int s = Count;
            var om = Omega(_blocks.Count - 1);                        // [b, n]
            var y = budget.Apply(om.t()).t();                         // [b, n]
            _quadratic.AddRange((om * y).sum(1).cpu().data<double>().ToArray());
            _norm2.AddRange((om * om).sum(1).cpu().data<double>().ToArray());
            // Block Gram-Schmidt, twice (Giraud et al. 2005: twice is enough), then QR of what is left.
            var c = zeros([s, b], dtype: ScalarType.Float64, device: device);
            var rest = y;
            if (s > 0)
                for (int pass = 0; pass < 2; pass++)
                {
                    var cp = _q.matmul(rest.t());                     // [s, b]
                    rest = rest - cp.t().matmul(_q);
                    c = c + cp;
                }
            var (qa, ra) = linalg.qr(rest.t());
            var qNew = qa.t().contiguous();                           // [b, n]
            var z = budget.Apply(qNew.t()).t();                       // [b, n]: A q for the new rows
            // R = [[R, C], [0, R_new]]: still upper triangular.
            var r = zeros([s + b, s + b], dtype: ScalarType.Float64);
            if (s > 0)
            {
                r.narrow(0, 0, s).narrow(1, 0, s).copy_(_r);
                r.narrow(0, 0, s).narrow(1, s, b).copy_(c.cpu());
            }
            r.narrow(0, s, b).narrow(1, s, b).copy_(ra.cpu());
            // H = QᵀAQ: the new rows are Q_allᵀ A q_new (symmetric A).
            var h = zeros([s + b, s + b], dtype: ScalarType.Float64);
            var cross = s > 0 ? _q.matmul(z.t()).cpu() : null;        // [s, b]
            var hb = qNew.matmul(z.t()).cpu();
            hb = (hb + hb.t()) / 2;
            if (s > 0)
            {
                h.narrow(0, 0, s).narrow(1, 0, s).copy_(_h);
                h.narrow(0, 0, s).narrow(1, s, b).copy_(cross!);
                h.narrow(0, s, b).narrow(1, 0, s).copy_(cross!.t());
            }
            h.narrow(0, s, b).narrow(1, s, b).copy_(hb);
            // W = QᵀΩ: new columns from the new test vectors, new rows from the old ones (regenerated).
            var w = zeros([s + b, s + b], dtype: ScalarType.Float64);
            if (s > 0) w.narrow(0, 0, s).narrow(1, 0, s).copy_(_w);
            var qAll = cat([_q, qNew], 0);
            w.narrow(1, s, b).copy_(qAll.matmul(om.t()).cpu());
            int col = 0;
            for (int j = 0; j < _blocks.Count - 1; j++)
            {
                w.narrow(0, s, b).narrow(1, col, _blocks[j]).copy_(qNew.matmul(Omega(j).t()).cpu());
                col += _blocks[j];
            }
            Replace(ref _q, qAll);
            Replace(ref _r, r);
            Replace(ref _h, h);
            Replace(ref _w, w);
        }

        static void Replace(ref Tensor field, Tensor value)
        {
            field.Dispose();
            field = value.DetachFromDisposeScope();
        }

        /// <summary>The mean of the t_i, its standard error, and whether the sketch holds the whole range of A (then tr(H) is exact).</summary>
        public (double Trace, double StandardError, bool Exact) Estimate()
        {
            using var scope = NewDisposeScope();
            int s = Count;
            double trH = _h.trace().ToDouble();
            var diag = _r.diagonal().abs();
            // Y = AΩ of lower rank than s: Q spans the range of A (Gaussian Ω), so the trace of A on the span of Q is tr(A)
            // exactly (ExactTrace). Likewise when s = n.
            if (s >= n || diag.min().ToDouble() <= rankTolerance * diag.max().ToDouble()) return (ExactTrace(), 0, true);
            var S = linalg.inv(_r).t();                               // columns: R⁻ᵀ e_i
            S = S / S.norm(0, keepdim: true);
            var c = (S * _w).sum(dim: 0);                                  // s_iᵀ w_i
            var V = _w - S * c.unsqueeze(0);                          // Qᵀ (I − Q_(i)Q_(i)ᵀ) ω_i, column i
            var sHs = (S * _h.matmul(S)).sum(dim: 0);
            var vHv = (V * _h.matmul(V)).sum(dim: 0);
            var xv = (_r * V).sum(dim: 0);                                 // ω_iᵀ A Q v_i = (QᵀAω_i)ᵀ v_i = r_iᵀ v_i
            var quad = Data.OwnedTensor.From(_quadratic.ToArray());
            var norm2 = Data.OwnedTensor.From(_norm2.ToArray()) - (_w * _w).sum(dim: 0) + c * c;   // ‖(I − Q_(i)Q_(i)ᵀ) ω_i‖²
            var scale = norm2.clamp_min(1e-300).reciprocal().mul(n - s + 1.0);
            var t = quad.sub(xv.mul(2.0)).add(vHv).mul(scale).sub(sHs).add(trH);
            var values = t.data<double>().ToArray();
            var (mean, se) = Statistics.MeanAndStandardError(values);
            return (mean, se, false);
        }

        /// <summary>
        /// tr(A) once the sketch spans the range of A: the trace of A compressed to the span of Q, tr((QᵀQ)⁺ QᵀAQ). Q is not
        /// orthonormal then: a block of test vectors whose images are (numerically) in the span of the earlier ones leaves
        /// Gram-Schmidt rounding noise, which the QR of the block turns into unit columns with components along the earlier
        /// rows; tr(QᵀAQ) would count those directions again (on a Hessian with a 3-dimensional null space, 4.5e-4 off a
        /// trace of −4.75, reported with error 0). The pseudo-inverse drops the combinations of rows whose Gram eigenvalue is
        /// below √(rank tolerance) of the largest (1e-5 in float64, 3e-3 in float32): such a combination is a near-copy of the
        /// others, and dividing by its eigenvalue would amplify the products' rounding in QᵀAQ by as much.
        /// </summary>
        double ExactTrace()
        {
            using var scope = NewDisposeScope();
            var gram = _q.matmul(_q.t()).cpu();
            var (mu, V) = linalg.eigh(gram);
            var keep = mu > Math.Sqrt(rankTolerance) * mu.max().ToDouble();
            var Vk = V.index_select(1, nonzero(keep).squeeze(1));
            var muK = mu.masked_select(keep);
            // Σ_k v_kᵀ H v_k / μ_k over the kept eigenpairs (v_k, μ_k) of QᵀQ.
            return ((Vk * _h.matmul(Vk)).sum(dim: 0) / muK).sum().ToDouble();
        }

        public void Dispose()
        {
            _q.Dispose();
            _r.Dispose();
            _h.Dispose();
            _w.Dispose();
        }
    }
}
