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
        if (output.dim() == 2 && output.shape[1] == 1 && target.dim() == 1) output = output.squeeze(1);
        // Other shapes would broadcast into a loss over all pairs of examples, silently wrong.
        if (!output.shape.SequenceEqual(target.shape))
            throw new ValleyException($"mean squared error: the model's outputs have shape [{string.Join(", ", output.shape)}], the targets [{string.Join(", ", target.shape)}]");
        return nn.functional.mse_loss(output, target);
    };

    /// <summary>The default loss for a task: cross-entropy for classification, MSE for regression.</summary>
    public static LossFunction For(TaskKind task) => task == TaskKind.Classification ? CrossEntropy : MeanSquaredError;
}
