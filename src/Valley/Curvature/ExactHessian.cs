using MathNet.Numerics.LinearAlgebra;
using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>
/// The exact dense matrix of an operator (for the Hessian: n products with unit vectors, in blocks),
/// symmetrized, with its asymmetry before symmetrization reported. Ground truth for models up to a few
/// thousand parameters (docs/design.md §3).
/// </summary>
/// <param name="Values">The symmetrized matrix.</param>
/// <param name="Asymmetry">max |A_ij − A_ji| / max |A_ij| of the products before symmetrization.</param>
public sealed record DenseMatrix(double[,] Values, double Asymmetry)
{
    /// <summary>The matrix's order n.</summary>
    public int Size => Values.GetLength(0);

    /// <summary>All eigenvalues in ascending order (symmetric eigendecomposition, float64).</summary>
    public double[] Eigenvalues() =>
        Matrix<double>.Build.DenseOfArray(Values).Evd(Symmetricity.Symmetric).EigenValues.Select(c => c.Real).OrderBy(x => x).ToArray();

    /// <summary>The sum of the diagonal.</summary>
    public double Trace()
    {
        double t = 0;
        for (int i = 0; i < Size; i++) t += Values[i, i];
        return t;
    }
}

/// <summary>The exact dense matrix of an operator, column block by column block.</summary>
public static class ExactHessian
{
    /// <summary>Largest operator size <see cref="Compute"/> accepts without <c>force</c>.</summary>
    public const long DefaultMaxSize = 5000;

    /// <summary>A e_j for every unit vector e_j (n products, <paramref name="blockSize"/> at a time), symmetrized.</summary>
    /// <param name="op">The operator.</param>
    /// <param name="blockSize">Unit vectors per block product.</param>
    /// <param name="force">Allow operators larger than <see cref="DefaultMaxSize"/>.</param>
    /// <param name="progress">Columns done so far.</param>
    public static DenseMatrix Compute(ICurvatureOperator op, int blockSize = 64, bool force = false, IProgress<long>? progress = null)
    {
        long n = op.Size;
        Check.AtLeast(blockSize, 1, nameof(blockSize));
        if (n > DefaultMaxSize && !force)
            throw new ValleyException($"the exact Hessian has {n}×{n} entries; it is meant for up to {DefaultMaxSize} parameters (select fewer parameters, e.g. one layer)");
        var budget = new Spectrum.ProductBudget(op, n, "exact Hessian");
        var m = new double[n, n];
        for (long start = 0; start < n; start += blockSize)
        {
            using var scope = NewDisposeScope();
            long k = Math.Min(blockSize, n - start);
            var E = zeros([n, k], dtype: op.DType, device: op.Device);
            for (long j = 0; j < k; j++) E[start + j, j] = 1;
            var cols = budget.Apply(E).cpu().contiguous();
            var data = cols.data<double>().ToArray();
            for (long i = 0; i < n; i++)
                for (long j = 0; j < k; j++)
                    m[i, start + j] = data[i * k + j];
            progress?.Report(start + k);
        }
        double asym = 0, scale = 0;
        for (long i = 0; i < n; i++)
            for (long j = 0; j < n; j++)
            {
                asym = Math.Max(asym, Math.Abs(m[i, j] - m[j, i]));
                scale = Math.Max(scale, Math.Abs(m[i, j]));
            }
        for (long i = 0; i < n; i++)
            for (long j = i + 1; j < n; j++)
            {
                var avg = 0.5 * (m[i, j] + m[j, i]);
                m[i, j] = avg;
                m[j, i] = avg;
            }
        return new DenseMatrix(m, scale > 0 ? asym / scale : 0);
    }
}
