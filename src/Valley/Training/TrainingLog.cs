using Valley.Runs;

namespace Valley.Training;

/// <summary>One row of the training log (end of an epoch).</summary>
/// <param name="Epoch">The epoch, counting from 1.</param>
/// <param name="Step">Steps taken so far.</param>
/// <param name="LearningRate">The learning rate of the epoch's last step.</param>
/// <param name="TrainLoss">Loss on the whole training set (eval mode).</param>
/// <param name="TrainAccuracy">Accuracy on the training set (classification only).</param>
/// <param name="TestLoss">Loss on the test set, if any.</param>
/// <param name="TestAccuracy">Accuracy on the test set (classification with a test set only).</param>
/// <param name="Seconds">Time since this session of training started.</param>
public sealed record EpochRecord(int Epoch, long Step, double LearningRate, double TrainLoss, double? TrainAccuracy, double? TestLoss, double? TestAccuracy, double Seconds);

/// <summary>One sharpness-monitor reading.</summary>
/// <param name="Step">The step after which λmax was computed.</param>
/// <param name="Epoch">The epoch of that step.</param>
/// <param name="LambdaMax">The top Hessian eigenvalue on the monitor's examples (Lanczos).</param>
/// <param name="RelativeResidual">‖Hv − λv‖/|λ| of the estimate.</param>
/// <param name="BatchLoss">The loss of the step's batch.</param>
/// <param name="Products">Hessian-vector products Lanczos used.</param>
public sealed record MonitorRecord(long Step, int Epoch, double LambdaMax, double RelativeResidual, double BatchLoss, long Products)
{
    /// <summary>With <see cref="TrainOptions.MonitorGgn"/>: the GGN's top eigenvalue on the same examples (Lanczos).</summary>
    public double? GgnLambdaMax { get; init; }

    /// <summary>With <see cref="TrainOptions.MonitorGgn"/>: the relative residual of <see cref="GgnLambdaMax"/>.</summary>
    public double? GgnRelativeResidual { get; init; }
}

/// <summary>What a training run did; serialized as <c>train.json</c> (also the resume state).</summary>
public sealed record TrainingLog
{
    /// <summary>The model's name (e.g. its spec "mlp:784-128-10"); a run resumes only with the same name.</summary>
    public required string Model { get; init; }

    /// <summary>The options of the run.</summary>
    public required TrainOptions Options { get; init; }

    /// <summary>
    /// The data (training and test sets) and the initial weights by content: a run is resumed only from identical inputs.
    /// Null in a log written by an older version (such a run cannot be resumed).
    /// </summary>
    public RunInputs? Inputs { get; init; }

    /// <summary>One record per finished epoch (and one more for the SWA average).</summary>
    public List<EpochRecord> Epochs { get; init; } = [];

    /// <summary>The sharpness monitor's readings.</summary>
    public List<MonitorRecord> Monitor { get; init; } = [];

    /// <summary>Epochs finished (and checkpointed, with an output folder).</summary>
    public int CompletedEpochs { get; set; }

    /// <summary>Steps taken.</summary>
    public long CompletedSteps { get; set; }

    /// <summary>Why training stopped (epochs or steps done, loss target reached, diverged), null while it runs.</summary>
    public string? StopReason { get; set; }

    /// <summary>Whether training ran to its end.</summary>
    public bool Finished { get; set; }

    /// <summary>For full-batch gradient descent: 2/η, the Edge of Stability threshold (Cohen et al. 2021).</summary>
    public double? StabilityThreshold => Options.BatchSize == 0 && Options.Optimizer == Optimizer.Sgd && Options.Momentum == 0 ? 2 / Options.LearningRate : null;
}

/// <summary>Progress of training, for progress bars.</summary>
/// <param name="Epoch">The current epoch, counting from 1.</param>
/// <param name="Epochs">Epochs planned.</param>
/// <param name="Step">Steps taken.</param>
/// <param name="StepsPerEpoch">Steps in a full epoch.</param>
/// <param name="RunningLoss">Mean batch loss of the epoch so far.</param>
/// <param name="LambdaMax">The last λmax of the sharpness monitor, if any.</param>
/// <param name="EpochEnd">At the end of an epoch, its record.</param>
public readonly record struct TrainProgress(int Epoch, int Epochs, long Step, long StepsPerEpoch, double RunningLoss, double? LambdaMax, EpochRecord? EpochEnd = null);

/// <summary>Raised when the loss or the weights become NaN or infinite; the last good checkpoint is kept.</summary>
public sealed class DivergenceException(string message) : ValleyException(message);
