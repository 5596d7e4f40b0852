using System.Globalization;

namespace Valley.Training;

/// <summary>The optimizer a <see cref="Trainer"/> trains with (in JSON: "sgd", "adam", "sam", "asam").</summary>
public enum Optimizer
{
    /// <summary>Stochastic gradient descent with momentum (<see cref="TrainOptions.Momentum"/>).</summary>
    Sgd,
    /// <summary>Adam (Kingma and Ba 2015) with PyTorch's defaults β = (0.9, 0.999).</summary>
    Adam,
    /// <summary>Sharpness-aware minimization (Foret et al. 2021) around <see cref="TrainOptions.BaseOptimizer"/>.</summary>
    Sam,
    /// <summary>Adaptive SAM (Kwon et al. 2021) around <see cref="TrainOptions.BaseOptimizer"/>.</summary>
    Asam,
}

/// <summary>The optimizer that SAM and ASAM wrap: it takes the step with the perturbed gradient and owns weight decay.</summary>
public enum BaseOptimizer
{
    /// <summary>Stochastic gradient descent with momentum.</summary>
    Sgd,
    /// <summary>Adam.</summary>
    Adam,
}

/// <summary>How a <see cref="Trainer"/> trains. Defaults give plain SGD with momentum 0.9, batches of 128, 10 epochs.</summary>
public sealed record TrainOptions
{
    /// <summary>The optimizer (SAM and ASAM wrap <see cref="BaseOptimizer"/>). Default SGD.</summary>
    public Optimizer Optimizer { get; init; } = Optimizer.Sgd;

    /// <summary>The base optimizer of SAM and ASAM. Default SGD.</summary>
    public BaseOptimizer BaseOptimizer { get; init; } = BaseOptimizer.Sgd;

    /// <summary>The initial learning rate η₀ (the <see cref="Schedule"/> scales it). Default 0.01.</summary>
    public double LearningRate { get; init; } = 0.01;

    /// <summary>SGD momentum in [0, 1). Default 0.9.</summary>
    public double Momentum { get; init; } = 0.9;

    /// <summary>L2 weight decay, applied by the (base) optimizer. Default 0.</summary>
    public double WeightDecay { get; init; }

    /// <summary>SAM/ASAM radius ρ; null: 0.05 for SAM (Foret et al. 2021), 0.5 for ASAM (Kwon et al. 2021).</summary>
    public double? Rho { get; init; }

    /// <summary>ASAM's η in T_w = |w| + η. Default 0.01.</summary>
    public double Eta { get; init; } = 0.01;

    /// <summary>m-sharpness: micro-batch size, each with its own perturbation (0 = the whole batch).</summary>
    public long MicroBatch { get; init; }

    /// <summary>Examples per step; 0 = full batch (gradient descent). Default 128.</summary>
    public long BatchSize { get; init; } = 128;

    /// <summary>Epochs to train (when <see cref="Steps"/> is 0). Default 10.</summary>
    public int Epochs { get; init; } = 10;

    /// <summary>Stop after this many steps (0 = no limit; then <see cref="Epochs"/> decides).</summary>
    public long Steps { get; init; }

    /// <summary>Stop when the full training loss (eval mode, end of an epoch) falls below this value.</summary>
    public double? StopAtLoss { get; init; }

    /// <summary>The learning-rate schedule. Default constant.</summary>
    public Schedule Schedule { get; init; } = Schedule.Constant;

    /// <summary>Average weights from this epoch on (SWA, counting epochs from 1); null = off.</summary>
    public int? SwaStart { get; init; }

    /// <summary>λmax by Lanczos every this many steps (0 = off), on <see cref="MonitorExamples"/> fixed training examples.</summary>
    public long MonitorEvery { get; init; }

    /// <summary>The monitor also computes the GGN's λmax (<see cref="Curvature.GgnOperator"/>) beside the Hessian's. Default false.</summary>
    public bool MonitorGgn { get; init; }

    /// <summary>Fixed training examples the sharpness monitor uses. Default 2048.</summary>
    public long MonitorExamples { get; init; } = 2048;

    /// <summary>Keep a weights checkpoint every this many epochs (the last epoch always). Default 1.</summary>
    public int CheckpointEvery { get; init; } = 1;

    /// <summary>Also write PyTorch <c>.pt</c> files of the weights.</summary>
    public bool SavePyTorch { get; init; }

    /// <summary>Seed of the shuffles and the monitor's examples.</summary>
    public long Seed { get; init; }

    /// <summary>Examples per batch when evaluating (does not change results). Default 2048.</summary>
    public long EvalBatchSize { get; init; } = 2048;

    /// <summary>
    /// Checks every option (an <see cref="ArgumentOutOfRangeException"/> names the property) and that training on
    /// <paramref name="trainCount"/> examples is a plan that fits.
    /// </summary>
    public void Validate(long trainCount)
    {
        if (!Enum.IsDefined(Optimizer)) throw Check.OutOfRange(nameof(Optimizer), Optimizer, "must be sgd, adam, sam or asam");
        if (!Enum.IsDefined(BaseOptimizer)) throw Check.OutOfRange(nameof(BaseOptimizer), BaseOptimizer, "must be sgd or adam");
        if (!Enum.IsDefined(Schedule)) throw Check.OutOfRange(nameof(Schedule), Schedule, "must be constant, step or cosine");
        Check.PositiveFinite(LearningRate, nameof(LearningRate));
        if (!(Momentum >= 0 && Momentum < 1)) throw Check.OutOfRange(nameof(Momentum), Momentum, "must be in [0, 1)");
        Check.NonNegativeFinite(WeightDecay, nameof(WeightDecay));
        if (Rho is { } rho) Check.NonNegativeFinite(rho, nameof(Rho));
        Check.NonNegativeFinite(Eta, nameof(Eta));
        if (BatchSize < 0) throw Check.OutOfRange(nameof(BatchSize), BatchSize, "must be positive, or 0 for the full batch");
        if (MicroBatch < 0) throw Check.OutOfRange(nameof(MicroBatch), MicroBatch, "must be positive, or 0 for the whole batch");
        if (Steps < 0) throw Check.OutOfRange(nameof(Steps), Steps, "must be non-negative (0 = no limit)");
        if (Steps == 0) Check.AtLeast(Epochs, 1, nameof(Epochs));
        if (StopAtLoss is { } stop) Check.PositiveFinite(stop, nameof(StopAtLoss));
        if (SwaStart is { } swa && swa < 1) throw Check.OutOfRange(nameof(SwaStart), swa, "must be at least 1 (epochs count from 1)");
        if (MonitorEvery < 0) throw Check.OutOfRange(nameof(MonitorEvery), MonitorEvery, "must be non-negative (0 = off)");
        if (MonitorEvery > 0) Check.AtLeast(MonitorExamples, 1, nameof(MonitorExamples));
        Check.AtLeast(EvalBatchSize, 1, nameof(EvalBatchSize));
        Check.AtLeast(CheckpointEvery, 1, nameof(CheckpointEvery));
        if (trainCount == 0) throw new ValleyException("the training set is empty");
        // Epochs are counted in an int: a step count beyond int.MaxValue epochs is no plan anyone can wait for.
        var plan = TrainingPlan.For(this, trainCount);
        if (Steps / plan.StepsPerEpoch >= int.MaxValue)
            throw Check.OutOfRange(nameof(Steps), Steps,
                $"must be fewer than {int.MaxValue.ToString(CultureInfo.InvariantCulture)} epochs of {plan.StepsPerEpoch.ToString(CultureInfo.InvariantCulture)} steps");
    }

    /// <summary>ρ as given, or the published default of the optimizer: 0.5 for ASAM, 0.05 otherwise.</summary>
    public double EffectiveRho => Rho ?? (Optimizer == Optimizer.Asam ? 0.5 : 0.05);
}

/// <summary>Batches, steps and epochs of a run, from the options and the size of the training set.</summary>
internal readonly record struct TrainingPlan(long Batch, long StepsPerEpoch, long TotalSteps, int Epochs)
{
    public static TrainingPlan For(TrainOptions o, long trainCount)
    {
        long batch = o.BatchSize == 0 ? trainCount : Math.Min(o.BatchSize, trainCount);
        long stepsPerEpoch = (trainCount + batch - 1) / batch;
        long totalSteps = o.Steps > 0 ? o.Steps : stepsPerEpoch * o.Epochs;
        // Validate refuses plans beyond int.MaxValue epochs before a plan is made for training.
        long epochs = o.Steps > 0 ? totalSteps / stepsPerEpoch + (totalSteps % stepsPerEpoch != 0 ? 1 : 0) : o.Epochs;
        return new TrainingPlan(batch, stepsPerEpoch, totalSteps, (int)Math.Min(epochs, int.MaxValue));
    }
}
