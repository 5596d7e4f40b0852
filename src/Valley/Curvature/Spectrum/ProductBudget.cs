using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>
/// The operator-vector products one estimator asks for, counted by the estimator (an operator need not count) and held to
/// its budget. It is the one way estimators call an operator: it checks the shape and finiteness of every product and
/// refuses a product beyond the budget, so an estimator can never spend more than it was given, whatever the operator.
/// </summary>
internal sealed class ProductBudget
{
    readonly ICurvatureOperator _op;
    readonly string _estimator;

    /// <param name="op">The operator products are asked of.</param>
    /// <param name="max">The most products the estimator may ask for (a block of k vectors is k products).</param>
    /// <param name="estimator">The estimator's name, for messages.</param>
    /// <param name="used">Products already spent (by the interrupted run an estimator resumes).</param>
    public ProductBudget(ICurvatureOperator op, long max, string estimator, long used = 0)
    {
        _op = op;
        Max = max;
        _estimator = estimator;
        Used = used;
    }

    /// <summary>The operator's size n.</summary>
    public long Size => _op.Size;

    /// <summary>The operator's device, where vectors for it are made.</summary>
    public Device Device => _op.Device;

    /// <summary>The budget.</summary>
    public long Max { get; }

    /// <summary>Products asked for so far.</summary>
    public long Used { get; private set; }

    /// <summary>Products still allowed.</summary>
    public long Left => Max - Used;

    /// <summary>
    /// A·V for columns V [n, k] (any dtype), in float64. A product with NaN or infinite entries stops the estimator here,
    /// with a message, instead of flowing into an eigen-solver.
    /// </summary>
    public Tensor Apply(Tensor V)
    {
        long n = _op.Size, k = V.shape[1];
        if (k > Left)
            throw new InvalidOperationException($"{_estimator} asked for {k} more products with {Left} of its budget of {Max} left (a bug in the estimator)");
        Used += k;
        using var scope = NewDisposeScope();
        var product = _op.ApplyBlock(V.to(_op.DType, _op.Device));
        if (product.shape.Length != 2 || product.shape[0] != n || product.shape[1] != k)
            throw new ValleyException($"{_estimator}: the operator returned a block of shape [{string.Join(", ", product.shape)}] for [{n}, {k}]");
        var result = product.to(ScalarType.Float64);
        // One reduction and no temporary: the float64 sum propagates NaN and infinities, and cannot overflow on finite
        // entries of the operator's dtype (at most ~3.4e38 each for float32, 1e8 of them stay far below 1.8e308). For a
        // float64 operator a sum can overflow only when entries are near 1e300, and then |x|'s maximum decides.
        if (result.numel() > 0 && !double.IsFinite(result.sum().ToDouble()) &&
            (_op.DType != ScalarType.Float64 || !double.IsFinite(result.abs().max().ToDouble())))
            throw new NonFiniteException($"{_estimator}: an operator-vector product has NaN or infinite entries; the loss or its curvature overflows " +
                                         "at these weights (compute in float64, or rescale inputs that are very large)");
        return result.MoveToOuterDisposeScope();
    }
}
