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
/// <param name="Stage">The estimator ("lanczos", "hutch++", "density", ...).</param>
/// <param name="Products">Products asked for so far by this estimator.</param>
/// <param name="MaxProducts">Its budget.</param>
/// <param name="Residual">The worst relative residual (eigen-solvers) or relative standard error (trace), when known.</param>
public readonly record struct EstimatorProgress(string Stage, long Products, long MaxProducts, double? Residual);

internal static class SpectrumMath
{
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

    /// <summary>‖A v_i − θ_i v_i‖ for rows v_i, with one block product from the estimator's budget.</summary>
    public static double[] ResidualNorms(ProductBudget budget, double[] values, Tensor rows)
    {
        using var scope = NewDisposeScope();
        var Av = budget.Apply(rows.t()).t();
        var theta = Data.OwnedTensor.From(values).to(rows.device).unsqueeze(1);
        return (Av - theta * rows).norm(1).cpu().data<double>().ToArray();
    }

    /// <summary>‖A v_i − θ_i v_i‖ for rows v_i whose images A v_i (rows) are known: no product.</summary>
    public static double[] ResidualNorms(Tensor images, double[] values, Tensor rows)
    {
        using var scope = NewDisposeScope();
        var theta = Data.OwnedTensor.From(values).to(rows.device).unsqueeze(1);
        return (images - theta * rows).norm(1).cpu().data<double>().ToArray();
    }

    /// <summary>A [r, k] tensor as a 2-D array of doubles.</summary>
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

/// <summary>An <see cref="IProgress{T}"/> that calls its handler synchronously on the reporting thread.</summary>
/// <param name="handler">Called with every report.</param>
public sealed class SyncProgress<T>(Action<T> handler) : IProgress<T>
{
    /// <inheritdoc/>
    public void Report(T value) => handler(value);
}
