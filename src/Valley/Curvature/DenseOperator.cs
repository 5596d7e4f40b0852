using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>An explicit symmetric matrix as an operator: the ground truth estimators are tested against.</summary>
public sealed class DenseOperator : CurvatureOperator, IDisposable
{
    /// <summary>The matrix (a copy owned by the operator).</summary>
    public Tensor Matrix { get; }

    /// <param name="matrix">A square matrix [n, n]; it is copied.</param>
    public DenseOperator(Tensor matrix)
    {
        if (matrix.shape.Length != 2 || matrix.shape[0] != matrix.shape[1])
            throw new ValleyException($"a dense operator needs a square matrix, got [{string.Join(", ", matrix.shape)}]");
        Matrix = matrix.detach().clone().DetachFromDisposeScope();
    }

    /// <param name="matrix">A square matrix, as float64.</param>
    public DenseOperator(double[,] matrix) : this(FromArray(matrix)) { }

    static Tensor FromArray(double[,] m)
    {
        int n = m.GetLength(0), k = m.GetLength(1);
        var flat = new double[n * k];
        Buffer.BlockCopy(m, 0, flat, 0, flat.Length * sizeof(double));
        return Data.OwnedTensor.From(flat, n, k);
    }

    /// <summary>The symmetric matrix Q diag(λ) Qᵀ with a seeded random orthogonal Q: a known spectrum.</summary>
    public static DenseOperator WithSpectrum(double[] eigenvalues, long seed)
    {
        using var scope = NewDisposeScope();
        int n = eigenvalues.Length;
        var g = new Generator((ulong)seed);
        var (q, _) = linalg.qr(randn([n, n], dtype: ScalarType.Float64, generator: g));
        var m = q.matmul(diag(Data.OwnedTensor.From(eigenvalues))).matmul(q.t());
        return new DenseOperator((m + m.t()) / 2);
    }

    /// <inheritdoc/>
    public override long Size => Matrix.shape[0];

    /// <inheritdoc/>
    public override ScalarType DType => Matrix.dtype;

    /// <inheritdoc/>
    public override Device Device => Matrix.device;

    /// <inheritdoc/>
    protected override Tensor ApplyCore(Tensor v) => Matrix.matmul(v);

    /// <inheritdoc/>
    protected override Tensor ApplyBlockCore(Tensor V) => Matrix.matmul(V);

    /// <summary>Frees the matrix.</summary>
    public void Dispose() => Matrix.Dispose();
}
