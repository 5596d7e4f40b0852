using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>A diagonal estimator.</summary>
public enum DiagonalMethod
{
    /// <summary>Hutchinson's diagonal estimator (Bekas, Kokiopoulou &amp; Saad 2007): the mean of z ⊙ Az over Rademacher probes.</summary>
    Hutchinson,

    /// <summary>XDiag (Epperly, Tropp &amp; Webber 2024, §2.4): a low-rank sketch's diagonal plus exchangeable leave-one-out corrections.</summary>
    XDiag,

    /// <summary>
    /// The exact diagonal when the operator can give it (<see cref="IExactDiagonal"/>: the Hessian or GGN of a stack of Linear
    /// layers, for about one product's work; standard errors 0); <see cref="Hutchinson"/> otherwise.
    /// </summary>
    Auto,
}

/// <summary>Options of <see cref="DiagonalEstimator"/>.</summary>
public sealed record DiagonalOptions
{
    /// <summary>The estimator. Default <see cref="DiagonalMethod.Auto"/>: exact where the operator allows, Hutchinson otherwise.</summary>
    public DiagonalMethod Method { get; init; } = DiagonalMethod.Auto;

    /// <summary>Operator products to spend (XDiag: half on the sketch, half on its image; even, at least 4). Default 100.</summary>
    public long Products { get; init; } = 100;

    /// <summary>Probes applied together as one block product (Hutchinson). Default 10.</summary>
    public int BlockSize { get; init; } = 10;

    /// <summary>Seed of the probes.</summary>
    public long Seed { get; init; }
}

/// <summary>A diagonal estimate with a standard error per entry.</summary>
public sealed record DiagonalEstimate
{
    /// <summary>"hutchinson", "xdiag", "exact" (an <see cref="IExactDiagonal"/> operator's, <see cref="DiagonalMethod.Auto"/>) or "kfac-factors" (K-FAC's, from its factors).</summary>
    public required string Method { get; init; }

    /// <summary>The estimated diagonal, one entry per parameter.</summary>
    public required double[] Diagonal { get; init; }

    /// <summary>
    /// Standard error of each entry: Hutchinson, the sample standard deviation of z_i (Az)_i over √probes; XDiag, that of
    /// its s leave-one-out estimates over √s (as XTrace's error estimate, Epperly et al. 2024 §2.3), which leaves out the
    /// error the leave-one-out sketches share and so understates the error when the sketch misses much of the matrix (a
    /// slowly decaying spectrum: prefer Hutchinson there). NaN with fewer than two.
    /// </summary>
    public required double[] StandardErrors { get; init; }

    /// <summary>Random probes.</summary>
    public required int Probes { get; init; }

    /// <summary>Operator products.</summary>
    public required long Products { get; init; }

    /// <summary>Wall-clock time.</summary>
    public double Seconds { get; init; }
}

/// <summary>
/// The state of an unfinished diagonal estimate, handed out after every block of products so that a caller can save it
/// and an interrupted estimate can continue from it (<see cref="DiagonalEstimator.Estimate"/>): the probes are drawn from
/// the seed again and those already applied skipped, so a resumed estimate equals an uninterrupted one.
/// </summary>
public sealed record DiagonalCheckpoint
{
    /// <summary>The options of the estimate (a checkpoint of other options is ignored).</summary>
    public required DiagonalOptions Options { get; init; }

    /// <summary>The operator's size n (a checkpoint of another size is ignored).</summary>
    public required long Size { get; init; }

    /// <summary>Products spent so far.</summary>
    public required long Products { get; init; }

    /// <summary>Probes applied so far.</summary>
    public required int Probes { get; init; }

    /// <summary>Hutchinson: Σ z ⊙ Az over the probes so far ([n]); XDiag: the sketch Y = AΩ ([n, s], row-major).</summary>
    public required double[] Sums { get; init; }

    /// <summary>Hutchinson: Σ (z ⊙ Az)² ([n]); XDiag: empty.</summary>
    public required double[] SquaredSums { get; init; }

    /// <summary>Wall-clock time spent so far.</summary>
    public double Seconds { get; init; }
}

/// <summary>Estimates of an operator's diagonal, for any <see cref="ICurvatureOperator"/>: stochastic, or exact where the operator allows.</summary>
public static class DiagonalEstimator
{
    /// <summary>Estimates diag(A) with <see cref="DiagonalOptions.Products"/> products, or computes it exactly (<see cref="DiagonalMethod.Auto"/> on an <see cref="IExactDiagonal"/> operator that can).</summary>
    /// <param name="op">The operator.</param>
    /// <param name="options">Method, products, block size, seed; null: the defaults.</param>
    /// <param name="progress">Products so far.</param>
    /// <param name="ct">Checked before every block of products.</param>
    /// <param name="resumeFrom">
    /// A checkpoint of an interrupted estimate with the same options on an operator of the same size: its products are kept
    /// and only the rest are computed (the result is that of an uninterrupted estimate); ignored when options or size differ.
    /// </param>
    /// <param name="checkpoint">Called with the state after every block of products (Hutchinson) or after the sketch (XDiag).</param>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="DiagonalOptions"/>).</exception>
    public static DiagonalEstimate Estimate(ICurvatureOperator op, DiagonalOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default,
        DiagonalCheckpoint? resumeFrom = null, Action<DiagonalCheckpoint>? checkpoint = null)
    {
        var o = options ?? new DiagonalOptions();
        Validate(op, o);
        if (o.Method == DiagonalMethod.Auto && ExactDiagonalEstimates.TryDiagonal(op, ct) is { } exact) return exact;
        if (resumeFrom is not null && !Matches(resumeFrom, op, o)) resumeFrom = null;
        return o.Method == DiagonalMethod.XDiag ? XDiag(op, o, progress, ct, resumeFrom, checkpoint) : Hutchinson(op, o, progress, ct, resumeFrom, checkpoint);
    }

    /// <summary>Whether a checkpoint is one of this estimate (same options and size, and arrays of the right lengths).</summary>
    static bool Matches(DiagonalCheckpoint c, ICurvatureOperator op, DiagonalOptions o) =>
        c.Options == o && c.Size == op.Size && c.Products >= 0 && c.Products <= o.Products && (o.Method == DiagonalMethod.XDiag
            ? c.Products == o.Products / 2 && c.Probes == o.Products / 2 && c.Sums.LongLength == op.Size * (o.Products / 2)
            : c.Probes == c.Products && c.Sums.LongLength == op.Size && c.SquaredSums.LongLength == op.Size);

    /// <summary>Checks the options against the operator.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="DiagonalOptions"/>).</exception>
    public static void Validate(ICurvatureOperator op, DiagonalOptions o)
    {
        if (!Enum.IsDefined(o.Method)) throw Check.OutOfRange(nameof(o.Method), o.Method, "must be Auto, Hutchinson or XDiag");
        Check.AtLeast(o.Products, o.Method == DiagonalMethod.XDiag ? 4 : 2, nameof(o.Products));
        Check.AtLeast(o.BlockSize, 1, nameof(o.BlockSize));
        if (o.Method == DiagonalMethod.XDiag && o.Products / 2 > op.Size)
            throw Check.OutOfRange(nameof(o.Products), o.Products, $"XDiag's sketch (half the products) must not exceed the operator's size ({op.Size})");
    }

    static DiagonalEstimate Hutchinson(ICurvatureOperator op, DiagonalOptions o, IProgress<EstimatorProgress>? progress, CancellationToken ct,
        DiagonalCheckpoint? from, Action<DiagonalCheckpoint>? checkpoint)
    {
        var sw = Stopwatch.StartNew();
        double earlier = from?.Seconds ?? 0;
        var budget = new ProductBudget(op, o.Products, "diagonal", from?.Products ?? 0);
        var gen = new Generator((ulong)o.Seed);
        var sum = from is null ? zeros(op.Size, dtype: ScalarType.Float64) : Data.OwnedTensor.From(from.Sums);
        var sumSq = from is null ? zeros(op.Size, dtype: ScalarType.Float64) : Data.OwnedTensor.From(from.SquaredSums);
        int m = from?.Probes ?? 0;
        // The interrupted run's blocks of probes, drawn again and skipped, so that the generator continues where it stopped.
        for (long done = 0; done < m;)
        {
            using var scope = NewDisposeScope();
            long k = Math.Min(o.BlockSize, o.Products - done);
            SpectrumMath.Rademacher(k, op.Size, gen, ScalarType.Float64);
            done += k;
        }
        while (budget.Left > 0)
        {
            ct.ThrowIfCancellationRequested();
            using (var scope = NewDisposeScope())
            {
                int k = (int)Math.Min(o.BlockSize, budget.Left);
                var z = SpectrumMath.Rademacher(k, op.Size, gen, ScalarType.Float64).to(op.Device); // [k, n]
                var s = (z * budget.Apply(z.t()).t()).cpu(); // z_j ⊙ A z_j, rows
                sum.add_(s.sum(0L));
                sumSq.add_(s.pow(2).sum(0L));
                m += k;
            }
            checkpoint?.Invoke(new DiagonalCheckpoint
            {
                Options = o, Size = op.Size, Products = budget.Used, Probes = m, Sums = sum.data<double>().ToArray(), SquaredSums = sumSq.data<double>().ToArray(),
                Seconds = earlier + sw.Elapsed.TotalSeconds,
            });
            progress?.Report(new EstimatorProgress("diagonal", budget.Used, budget.Max, null));
        }
        var mean = sum / m;
        var se = m < 2 ? full(op.Size, double.NaN, dtype: ScalarType.Float64)
            : ((sumSq - sum.pow(2) / m).clamp_min(0) / (m - 1) / m).sqrt();
        var result = new DiagonalEstimate
        {
            Method = "hutchinson", Diagonal = mean.data<double>().ToArray(), StandardErrors = se.data<double>().ToArray(), Probes = m,
            Products = budget.Used, Seconds = earlier + sw.Elapsed.TotalSeconds,
        };
        foreach (var t in new[] { sum, sumSq, mean, se }) t.Dispose();
        return result;
    }

    /// <summary>
    /// XDiag with s = products/2 Rademacher test vectors Ω: Y = AΩ, Q R = Y, Z = AQ; the estimate is the mean over i of
    /// diag(Q_(i) Q_(i)ᵀ A) + ω_i ⊙ (I − Q_(i) Q_(i)ᵀ) A ω_i, Q_(i) a basis of the sketch without ω_i, all from the one sketch
    /// through the normalized columns s_i of R⁻ᵀ (Epperly, Tropp &amp; Webber 2024, §2.4 and their Program SM4.3). The
    /// checkpoint is the sketch Y: a resumed estimate spends only the second half of the products.
    /// </summary>
    static DiagonalEstimate XDiag(ICurvatureOperator op, DiagonalOptions o, IProgress<EstimatorProgress>? progress, CancellationToken ct,
        DiagonalCheckpoint? from, Action<DiagonalCheckpoint>? checkpoint)
    {
        var sw = Stopwatch.StartNew();
        double earlier = from?.Seconds ?? 0;
        long s = o.Products / 2;
        var budget = new ProductBudget(op, s * 2, "xdiag", from?.Products ?? 0);
        var gen = new Generator((ulong)o.Seed);
        // Ω, Y, Q, Z and their products: about a dozen float64 n × s matrices at once.
        MachineLimits.EnsureMemory(12.0 * s * op.Size * sizeof(double), $"XDiag with {o.Products} products on {op.Size} parameters");
        using var scope = NewDisposeScope();
        var omega = SpectrumMath.Rademacher(s, op.Size, gen, ScalarType.Float64).t().to(op.Device); // [n, s]
        Tensor Y;
        if (from is not null) Y = Data.OwnedTensor.From(from.Sums, op.Size, s).to(op.Device);
        else
        {
            ct.ThrowIfCancellationRequested();
            Y = budget.Apply(omega);
            checkpoint?.Invoke(new DiagonalCheckpoint
            {
                Options = o, Size = op.Size, Products = budget.Used, Probes = (int)s, Sums = Y.cpu().contiguous().data<double>().ToArray(), SquaredSums = [],
                Seconds = sw.Elapsed.TotalSeconds,
            });
        }
        progress?.Report(new EstimatorProgress("xdiag", budget.Used, budget.Max, null));
        ct.ThrowIfCancellationRequested();
        var (Q, R) = linalg.qr(Y);
        var Z = budget.Apply(Q);
        progress?.Report(new EstimatorProgress("xdiag", budget.Used, budget.Max, null));
        var T = Z.t().matmul(omega); // [s, s]
        var S = linalg.inv(R).t();
        S = S / S.norm(0, keepdim: true);
        var QS = Q.matmul(S);
        var ZS = Z.matmul(S);
        var QT = Q.matmul(T);
        var sT = (S * T).sum(0L); // s_iᵀ t_i
        var dQZ = (Q * Z).sum(1, keepdim: true); // diag(Q Zᵀ)
        // The s leave-one-out estimates as columns [n, s].
        var each = dQZ - QS * ZS + omega * Y - omega * QT + omega * QS * sT.unsqueeze(0);
        var mean = each.mean([1]).cpu();
        var se = s < 2 ? full(op.Size, double.NaN, dtype: ScalarType.Float64) : (each.std(1) / Math.Sqrt(s)).cpu();
        return new DiagonalEstimate
        {
            Method = "xdiag", Diagonal = mean.data<double>().ToArray(), StandardErrors = se.data<double>().ToArray(), Probes = (int)s,
            Products = budget.Used, Seconds = earlier + sw.Elapsed.TotalSeconds,
        };
    }
}
