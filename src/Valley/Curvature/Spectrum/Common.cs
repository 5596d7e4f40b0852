using System.Text.Json.Serialization;
using TorchSharp;
using MathNet.Numerics.LinearAlgebra;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>Which end of the spectrum an eigen-solver looks for.</summary>
public enum EigenTarget
{
    /// <summary>Largest algebraic eigenvalues (λmax first): the "top" of the Hessian, the usual sharpness.</summary>
    Largest,
    /// <summary>Smallest algebraic (most negative) eigenvalues (λmin first): directions of negative curvature.</summary>
    Smallest,
    /// <summary>Largest in absolute value (SciPy eigsh 'LM').</summary>
    LargestMagnitude,
}

/// <summary>Progress of a long estimator: products so far and, where meaningful, the current worst relative residual or standard error.</summary>
public readonly record struct EstimatorProgress(string Stage, long Products, long MaxProducts, double? Residual);

/// <summary>
/// Eigenpairs of an operator from Lanczos, power iteration or a dense eigendecomposition, ordered as
/// the target asks (largest first for <see cref="EigenTarget.Largest"/>, most negative first for Smallest).
/// </summary>
public sealed record Eigenpairs
{
    public required string Method { get; init; }
    public required EigenTarget Target { get; init; }
    public required double[] Values { get; init; }
    /// <summary>‖Av − θv‖ for each pair (computed with explicit products when <c>verified</c>; else the Lanczos estimate).</summary>
    public required double[] Residuals { get; init; }
    public bool ResidualsVerified { get; init; }
    public required long Products { get; init; }
    public required int Iterations { get; init; }
    public required bool Converged { get; init; }
    public double Tolerance { get; init; }
    public double Seconds { get; init; }
    /// <summary>The eigenvectors as rows [k, n] (float64), when asked for. Not serialized.</summary>
    [JsonIgnore] public Tensor? Vectors { get; init; }

    /// <summary>‖Av − θv‖ / max(|θ|, tiny): the relative residual of each pair.</summary>
    public double[] RelativeResiduals => Values.Select((v, i) => Residuals[i] / Math.Max(Math.Abs(v), 1e-300)).ToArray();
}

internal static class SpectrumMath
{
    /// <summary>
    /// A·V for columns V [n, k] (any dtype), in float64: the one way estimators ask an operator for products. A product with
    /// NaN or infinite entries stops the estimator here, with a message, instead of flowing into an eigen-solver.
    /// </summary>
    public static Tensor Apply(ICurvatureOperator op, Tensor V, string estimator)
    {
        var result = op.ApplyBlock(V.to(op.DType)).to(ScalarType.Float64);
        if (!isfinite(result).all().ToBoolean())
        {
            result.Dispose();
            throw new NonFiniteException($"{estimator}: an operator-vector product has NaN or infinite entries; the loss or its curvature overflows " +
                                         "at these weights (compute in float64, or rescale inputs that are very large)");
        }
        return result;
    }

    /// <summary>Symmetric eigendecomposition of a small dense matrix (float64): ascending values and column eigenvectors.</summary>
    public static (double[] Values, Matrix<double> Vectors) SymmetricEigen(double[,] t)
    {
        var m = Matrix<double>.Build.DenseOfArray(t);
        var evd = m.Evd(Symmetricity.Symmetric);
        var values = evd.EigenValues.Select(c => c.Real).ToArray();
        var order = Enumerable.Range(0, values.Length).OrderBy(i => values[i]).ToArray();
        var vecs = Matrix<double>.Build.Dense(m.RowCount, m.ColumnCount);
        for (int c = 0; c < order.Length; c++) vecs.SetColumn(c, evd.EigenVectors.Column(order[c]));
        return (order.Select(i => values[i]).ToArray(), vecs);
    }

    /// <summary>Indices into ascending values for the k wanted ones, best first.</summary>
    public static int[] Wanted(double[] ascending, int k, EigenTarget target)
    {
        var idx = Enumerable.Range(0, ascending.Length);
        var ordered = target switch
        {
            EigenTarget.Largest => idx.OrderByDescending(i => ascending[i]),
            EigenTarget.Smallest => idx.OrderBy(i => ascending[i]),
            _ => idx.OrderByDescending(i => Math.Abs(ascending[i])),
        };
        return ordered.Take(k).ToArray();
    }

    /// <summary>True when <paramref name="a"/> ranks strictly before <paramref name="b"/> for the target, by more than <paramref name="margin"/>.</summary>
    public static bool Better(double a, double b, EigenTarget target, double margin) => target switch
    {
        EigenTarget.Largest => a > b + margin,
        EigenTarget.Smallest => a < b - margin,
        _ => Math.Abs(a) > Math.Abs(b) + margin,
    };

    /// <summary>Rademacher vectors (±1 with equal probability) as rows [count, n].</summary>
    public static Tensor Rademacher(long count, long n, Generator g, ScalarType dtype) =>
        randint(0, 2, [count, n], generator: g, dtype: ScalarType.Int8).to(dtype).mul_(2).sub_(1);

    public static double[,] ToArray(Tensor t)
    {
        var c = t.to(ScalarType.Float64).cpu().contiguous();
        int r = (int)c.shape[0], k = (int)c.shape[1];
        var d = c.data<double>().ToArray();
        var a = new double[r, k];
        Buffer.BlockCopy(d, 0, a, 0, d.Length * sizeof(double));
        return a;
    }
}
