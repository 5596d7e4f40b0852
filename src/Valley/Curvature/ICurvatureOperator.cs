using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>
/// A symmetric linear operator on vectors of length <see cref="Size"/>: the central abstraction of Valley
/// (like SciPy's LinearOperator or curvlinops). Estimators (Lanczos, Hutchinson, SLQ) take any operator
/// and know nothing of models. The Hessian of an objective is one; so is a dense matrix, which is how
/// estimators are tested against exact answers. An operator need not count its products: every estimator counts
/// the products it asks for and keeps to its own budget.
/// </summary>
public interface ICurvatureOperator
{
    /// <summary>Dimension n of the operator (number of parameters).</summary>
    long Size { get; }

    /// <summary>The dtype of vectors the operator takes and returns.</summary>
    ScalarType DType { get; }

    /// <summary>The device of vectors the operator takes and returns.</summary>
    Device Device { get; }

    /// <summary>A·v for a vector of shape [n]; returns a new tensor of shape [n]. v is only read (it may be a view of an
    /// estimator's Krylov basis), and the result is not kept by the operator.</summary>
    Tensor Apply(Tensor v);

    /// <summary>
    /// A·V for a block of k vectors as columns, shape [n, k]; returns a new tensor [n, k]. V is only read (it may be a view
    /// of an estimator's Krylov basis, in any layout), and the result is not kept by the operator. Operators that can share
    /// work among the columns (the Hessian shares each batch's forward and first backward pass) override it.
    /// </summary>
    Tensor ApplyBlock(Tensor V);
}

/// <summary>Base class of operators: checks shapes, and applies blocks column by column unless overridden.</summary>
public abstract class CurvatureOperator : ICurvatureOperator
{
    /// <inheritdoc/>
    public abstract long Size { get; }

    /// <inheritdoc/>
    public abstract ScalarType DType { get; }

    /// <inheritdoc/>
    public abstract Device Device { get; }

    /// <inheritdoc/>
    public Tensor Apply(Tensor v)
    {
        if (v.shape.Length != 1 || v.shape[0] != Size)
            throw new ValleyException($"operator of size {Size} applied to a vector of shape [{string.Join(", ", v.shape)}]");
        return ApplyCore(v);
    }

    /// <inheritdoc/>
    public Tensor ApplyBlock(Tensor V)
    {
        if (V.shape.Length != 2 || V.shape[0] != Size)
            throw new ValleyException($"operator of size {Size} applied to a block of shape [{string.Join(", ", V.shape)}]");
        return ApplyBlockCore(V);
    }

    /// <summary>A·v for a vector of the right shape.</summary>
    protected abstract Tensor ApplyCore(Tensor v);

    /// <summary>A·V for a block of the right shape; by default one <see cref="ApplyCore"/> per column.</summary>
    protected virtual Tensor ApplyBlockCore(Tensor V)
    {
        using var scope = NewDisposeScope();
        var cols = new Tensor[V.shape[1]];
        for (int j = 0; j < cols.Length; j++) cols[j] = ApplyCore(V[.., j].contiguous());
        return stack(cols, 1).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// An operator that can give its diagonal exactly, for far less than the n products the definition costs: K-FAC from its
/// Kronecker factors, and the Hessian and the GGN of a stack of Linear layers by one backward pass of the pre-activations'
/// Hessian diagonals (docs/design.md §4, "Exact diagonal and trace of a stack of Linear layers"). The trace and diagonal estimators use it when asked
/// for <see cref="Spectrum.TraceMethod.Auto"/> or <see cref="Spectrum.DiagonalMethod.Auto"/>.
/// </summary>
public interface IExactDiagonal : ICurvatureOperator
{
    /// <summary>The exact diagonal, [n] in float64 on the operator's device (exact up to the rounding of the operator's dtype),
    /// or null when this operator cannot give it for its model (a model that is not a stack of Linear layers, a loss other
    /// than cross-entropy, MSE or BCE) or only at more than 50 products' work (a deep, wide stack): then estimate it.</summary>
    /// <param name="ct">Checked between the chunks of the data pass.</param>
    Tensor? ExactDiagonal(CancellationToken ct = default);
}
