using System.Globalization;

namespace Valley.Study;

/// <summary>
/// One model of the study: how it is trained (optimizer, batch size, learning rate, seed, SAM ρ, and optionally its own
/// architecture, weight decay and training-set size), or, with <see cref="Weights"/>, a model trained elsewhere that the study
/// loads and measures without training (<c>valley study --models DIR</c>).
/// </summary>
public sealed record StudyModel(string Name, string Optimizer, long BatchSize, double LearningRate, long Seed, double? Rho = null)
{
    Dictionary<string, string>? _hyperparameters;

    /// <summary>The model's architecture (a built-in spec or a TorchScript archive); null: <see cref="StudyOptions.Model"/>.</summary>
    public string? Architecture { get; init; }

    /// <summary>L2 weight decay of the (base) optimizer. Default 0.</summary>
    public double WeightDecay { get; init; }

    /// <summary>Training examples of this model: a seeded subset of the study's training examples (nested: a smaller one lies inside a larger one); null: all of them.</summary>
    public long? TrainExamples { get; init; }

    /// <summary>Weights of a model trained elsewhere (state_dict .pt, .safetensors, .dat or a TorchScript archive): loaded and measured, not trained. Null: the study trains the model.</summary>
    public string? Weights { get; init; }

    /// <summary>The weights training started from (for the distance from initialization) of a model given by <see cref="Weights"/>; null: unknown.</summary>
    public string? Initialization { get; init; }

    /// <summary>Optimization steps the model was trained for, when it was trained elsewhere and they are known.</summary>
    public long? Steps { get; init; }

    /// <summary>Whether the study loads this model rather than training it.</summary>
    [System.Text.Json.Serialization.JsonIgnore] public bool IsLoaded => Weights is not null;

    /// <summary>
    /// The hyperparameters that vary across the study, by name (architecture, optimizer, lr, batch_size, weight_decay, rho, seed,
    /// train_size; lr and rho where they vary for one optimizer, since a rate that comes with its optimizer is part of its
    /// setting; optimizer, batch_size and seed always; a loaded model's further columns of models.csv), for the statistics.
    /// Unless set, the training settings of this model: optimizer, lr, batch_size, seed, and weight_decay, rho,
    /// architecture, train_size where given.
    /// </summary>
    public Dictionary<string, string> Hyperparameters
    {
        get => _hyperparameters ?? Settings();
        init => _hyperparameters = value;
    }

    /// <summary>Every training setting of the model under its hyperparameter name.</summary>
    internal Dictionary<string, string> Settings()
    {
        var h = new Dictionary<string, string>
        {
            ["optimizer"] = Optimizer, ["lr"] = Format(LearningRate), ["batch_size"] = Format(BatchSize), ["seed"] = Format(Seed),
        };
        if (WeightDecay != 0) h["weight_decay"] = Format(WeightDecay);
        if (Rho is { } rho) h["rho"] = Format(rho);
        if (Architecture is { } a) h["architecture"] = a;
        if (TrainExamples is { } n) h["train_size"] = Format(n);
        return h;
    }

    internal static string Format(double v) => v.ToString("R", CultureInfo.InvariantCulture);
    internal static string Format(long v) => v.ToString(CultureInfo.InvariantCulture);
}

/// <summary>
/// What <c>valley study</c> does, resolved from a <see cref="StudySpec"/> (<see cref="StudySpec.ToOptions"/>). Presets ship as
/// spec files: <c>quick</c> (a one-minute smoke run, used by the tests), <c>default</c> (≤ 10 minutes on 2 cores), <c>full</c>
/// (the whole training set, several architectures: hours, or an MPI job).
/// </summary>
public sealed record StudyOptions
{
    /// <summary>The measures the study runs by default: the curvature ones and the sharpness measures it has always had.</summary>
    public static IReadOnlyList<string> DefaultMeasures { get; } =
    [
        "lambda_max", "top5_sum", "trace", "negative_mass", "keskar", "sam", "worst-case-l2-adaptive", "average-case-adaptive", "pacbayes",
        "fisher-trace", "relative-flatness",
    ];

    /// <summary>The curvature measures (Hessian estimators) the study knows besides <see cref="Sharpness.SharpnessMeasures"/>.</summary>
    public static IReadOnlyList<string> CurvatureMeasures { get; } = ["lambda_max", "top5_sum", "trace", "negative_mass"];

    /// <summary>The preset or spec the options come from (quick, default, full, or a spec's name).</summary>
    public string Preset { get; init; } = "default";
    /// <summary>The architecture spec every model is built from unless it has its own.</summary>
    public string Model { get; init; } = "mlp:784-128-64-10";
    /// <summary>Training examples (seeded subset; 0 = all) and test examples (0 = all).</summary>
    public long TrainExamples { get; init; } = 10_000;
    /// <summary>Test examples (seeded subset; 0 = all).</summary>
    public long TestExamples { get; init; }
    /// <summary>The models of the grid: how each is trained (or, for a zoo, where its weights are).</summary>
    public List<StudyModel> Models { get; init; } = [];
    /// <summary>Stopping rule: train until the full training loss is below this, or <see cref="MaxEpochs"/>.</summary>
    public double StopAtLoss { get; init; } = 0.2;
    /// <summary>Large batches take many more epochs to reach the same loss (10 steps per epoch at 10% of the data).</summary>
    public int MaxEpochs { get; init; } = 200;
    /// <summary>SGD momentum of the SGD models and of SAM's base optimizer. Default 0.9.</summary>
    public double Momentum { get; init; } = 0.9;
    /// <summary>The measures run on every model: <see cref="CurvatureMeasures"/> and names of <see cref="Sharpness.SharpnessMeasures"/>.</summary>
    public List<string> Measures { get; init; } = [.. DefaultMeasures];
    /// <summary>Examples the curvature and sharpness measures use (seeded subset of each model's training set).</summary>
    public long MeasureExamples { get; init; } = 2048;
    /// <summary>SLQ runs per model's spectral density.</summary>
    public int DensityRuns { get; init; } = 5;
    /// <summary>SLQ Lanczos steps per run.</summary>
    public int DensitySteps { get; init; } = 50;
    /// <summary>Budget of Hessian-vector products per estimator (top-5 eigenvalues, trace).</summary>
    public long MaxProducts { get; init; } = 400;
    /// <summary>Relative standard error the trace estimate stops at, where the trace is estimated (XTrace, for models that are not a stack of Linear layers; a stack's trace is exact). Default 0.05.</summary>
    public double TraceRelativeError { get; init; } = 0.05;
    /// <summary>Keskar ε values, one result each. Default 1e-3 and 5e-4.</summary>
    public List<double> Epsilons { get; init; } = [1e-3, 5e-4];
    /// <summary>Radius ρ of the SAM, worst-case and average-case sharpness measures; null: each measure's default.</summary>
    public double? SharpnessRho { get; init; }
    /// <summary>Ascent steps of Keskar and worst-case sharpness; null: each measure's default.</summary>
    public int? SharpnessSteps { get; init; }
    /// <summary>Monte-Carlo samples of the average-case and PAC-Bayes measures; null: each measure's default.</summary>
    public int? SharpnessSamples { get; init; }
    /// <summary>Points of every model's 1D filter-normalized slice in the report.</summary>
    public int SlicePoints { get; init; } = 21;
    /// <summary>Points per axis of the 2D contours of the flattest and the sharpest model.</summary>
    public int ContourPoints { get; init; } = 21;
    /// <summary>Points of Keskar's parametric plot between the small- and the large-batch model.</summary>
    public int ParametricPoints { get; init; } = 31;
    /// <summary>Seed of the data subsets and the figures' directions (each model has its own training seed).</summary>
    public long Seed { get; init; }
    /// <summary>The loss every model is trained, measured and sliced with; null: cross-entropy (the study is about classifiers' accuracy gaps).</summary>
    [System.Text.Json.Serialization.JsonIgnore] public Valley.Curvature.LossFunction? Loss { get; init; }

    /// <summary>The loss in use: <see cref="Loss"/> or cross-entropy.</summary>
    [System.Text.Json.Serialization.JsonIgnore] public Valley.Curvature.LossFunction EffectiveLoss => Loss ?? Valley.Curvature.Losses.CrossEntropy;

    /// <summary>The architecture of a model: its own or <see cref="Model"/>.</summary>
    public string ArchitectureOf(StudyModel m) => m.Architecture ?? Model;

    /// <summary>The options of a preset (quick, default or full, shipped as spec files: <see cref="StudySpec.Preset"/>) for an architecture.</summary>
    public static StudyOptions For(string preset, string model = "mlp:784-128-64-10")
    {
        var spec = StudySpec.Preset(preset);
        // The architecture given replaces the preset's single one; a preset of several architectures keeps them.
        if (spec.Architectures is null) spec = spec with { Model = model };
        return spec.ToOptions();
    }
}
