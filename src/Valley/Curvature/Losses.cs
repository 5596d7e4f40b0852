using TorchSharp;
using Valley.Data;
using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>A loss averaged over the examples of a batch: (model output, targets) → scalar.</summary>
public delegate Tensor LossFunction(Tensor output, Tensor target);

/// <summary>The usual losses, as PyTorch computes them.</summary>
public static class Losses
{
    /// <summary>Cross-entropy of logits [B, K] against int64 labels [B], mean over the batch (PyTorch's default).</summary>
    public static readonly LossFunction CrossEntropy = (output, target) => nn.functional.cross_entropy(output, target);

    /// <summary>
    /// Mean squared error, mean over all elements (PyTorch's <c>MSELoss()</c>). Targets of shape [B] are
    /// compared with outputs [B] or [B, 1].
    /// </summary>
    public static readonly LossFunction MeanSquaredError = (output, target) =>
    {
        output = SameShape("mean squared error", output, target);
        return nn.functional.mse_loss(output, target);
    };

    /// <summary>
    /// Binary cross-entropy of logits against float targets in [0, 1] of the output's shape, mean over all elements (PyTorch's
    /// <c>BCEWithLogitsLoss()</c>, <c>binary_cross_entropy_with_logits</c>): one independent yes/no per output, as for
    /// multi-label models. Targets of shape [B] are compared with outputs [B] or [B, 1].
    /// </summary>
    public static readonly LossFunction BinaryCrossEntropy = (output, target) =>
    {
        if (!target.is_floating_point())
            throw new ValleyException($"binary cross-entropy: the targets are {target.dtype}; it needs floating-point targets in [0, 1] of the model's output shape");
        output = SameShape("binary cross-entropy", output, target);
        return nn.functional.binary_cross_entropy_with_logits(output, target);
    };

    static Tensor SameShape(string loss, Tensor output, Tensor target)
    {
        if (output.dim() == 2 && output.shape[1] == 1 && target.dim() == 1) output = output.squeeze(1);
        // Other shapes would broadcast into a loss over all pairs of examples, silently wrong.
        if (!output.shape.SequenceEqual(target.shape))
            throw new ValleyException($"{loss}: the model's outputs have shape [{string.Join(", ", output.shape)}], the targets [{string.Join(", ", target.shape)}]");
        return output;
    }

    /// <summary>The default loss for a task: cross-entropy for classification, MSE for regression.</summary>
    public static LossFunction For(TaskKind task) => task == TaskKind.Classification ? CrossEntropy : MeanSquaredError;

    /// <summary>The names <see cref="Named"/> knows.</summary>
    public static IReadOnlyList<string> Names { get; } = ["cross-entropy", "mse", "bce"];

    /// <summary>
    /// A loss by name: "cross-entropy", "mse" or "bce" (binary cross-entropy with logits); null or empty: the task's default
    /// (<see cref="For"/>).
    /// </summary>
    public static LossFunction Named(string? name, TaskKind task) => name switch
    {
        null or "" => For(task),
        "cross-entropy" => CrossEntropy,
        "mse" => MeanSquaredError,
        "bce" => BinaryCrossEntropy,
        _ => throw Check.OutOfRange(nameof(name), name, $"must be one of {string.Join(", ", Names)}"),
    };

    /// <summary>The name of one of the losses here, or null for another function.</summary>
    public static string? NameOf(LossFunction loss) =>
        ReferenceEquals(loss, CrossEntropy) ? "cross-entropy" : ReferenceEquals(loss, MeanSquaredError) ? "mse" : ReferenceEquals(loss, BinaryCrossEntropy) ? "bce" : null;

    /// <summary>
    /// Checks a data set's targets against one of the losses here before LibTorch sees them: cross-entropy needs class labels
    /// (classification), MSE floating-point targets, binary cross-entropy floating-point targets in [0, 1]. Other loss functions
    /// are the caller's to check.
    /// </summary>
    internal static void CheckTargets(LossFunction loss, Dataset data)
    {
        if (ReferenceEquals(loss, CrossEntropy) && data.Task != TaskKind.Classification)
            throw new ValleyException($"{data.Name}: cross-entropy needs integer class labels, but the targets are floating-point regression targets (use the mse or bce loss, or classification data)");
        if ((ReferenceEquals(loss, MeanSquaredError) || ReferenceEquals(loss, BinaryCrossEntropy)) && data.Task != TaskKind.Regression)
            throw new ValleyException($"{data.Name}: {(ReferenceEquals(loss, MeanSquaredError) ? "mean squared error" : "binary cross-entropy")} needs floating-point targets, but the data hold class labels (use the cross-entropy loss, or regression data)");
        if (ReferenceEquals(loss, BinaryCrossEntropy) && data.Y.numel() > 0)
        {
            var (min, max) = data.Y.aminmax();
            double lo, hi;
            using (min) using (max) (lo, hi) = (min.ToDouble(), max.ToDouble());
            if (lo < 0 || hi > 1)
                throw new ValleyException($"{data.Name}: binary cross-entropy needs targets in [0, 1], but they go from {lo:G6} to {hi:G6}");
        }
    }
}
