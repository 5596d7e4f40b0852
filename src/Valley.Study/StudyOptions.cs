namespace Valley.Study;

/// <summary>One model of the study: how it is trained.</summary>
public sealed record StudyModel(string Name, string Optimizer, long BatchSize, double LearningRate, long Seed, double? Rho = null)
{
    /// <summary>The hyperparameters varied across the study (for the granulated τ).</summary>
    public Dictionary<string, string> Hyperparameters => new()
    {
        ["batch_size"] = BatchSize.ToString(), ["optimizer"] = Optimizer, ["seed"] = Seed.ToString(),
    };
}

/// <summary>
/// What <c>valley study</c> does. Presets: <c>quick</c> (a one-minute smoke run, used by the tests), <c>default</c> (≤ 10 minutes on
/// 2 cores), <c>full</c> (the whole training set, three seeds).
/// </summary>
public sealed record StudyOptions
{
    /// <summary>The preset the options come from (quick, default, full).</summary>
    public string Preset { get; init; } = "default";
    /// <summary>The architecture spec every model is built from.</summary>
    public string Model { get; init; } = "mlp:784-128-64-10";
    /// <summary>Training examples (seeded subset; 0 = all) and test examples (0 = all).</summary>
    public long TrainExamples { get; init; } = 10_000;
    /// <summary>Test examples (seeded subset; 0 = all).</summary>
    public long TestExamples { get; init; }
    /// <summary>The models of the grid: how each is trained.</summary>
    public List<StudyModel> Models { get; init; } = [];
    /// <summary>Stopping rule: train until the full training loss is below this, or <see cref="MaxEpochs"/>.</summary>
    public double StopAtLoss { get; init; } = 0.2;
    /// <summary>Large batches take many more epochs to reach the same loss (10 steps per epoch at 10% of the data).</summary>
    public int MaxEpochs { get; init; } = 200;
    /// <summary>Examples the curvature and sharpness measures use (seeded subset of the training set).</summary>
    public long MeasureExamples { get; init; } = 2048;
    /// <summary>SLQ runs per model's spectral density.</summary>
    public int DensityRuns { get; init; } = 5;
    /// <summary>SLQ Lanczos steps per run.</summary>
    public int DensitySteps { get; init; } = 50;
    /// <summary>Budget of Hessian-vector products per estimator (top-5 eigenvalues, trace).</summary>
    public long MaxProducts { get; init; } = 400;
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

    /// <summary>The options of a preset (quick, default or full) for an architecture.</summary>
    public static StudyOptions For(string preset, string model = "mlp:784-128-64-10")
    {
        // Keskar et al.: small batch 256 vs large batch 10% of the training set, Adam; plus one batch size in between,
        // SGD at both ends, and SAM (SGD base, ρ = 0.05) at the small batch size.
        List<StudyModel> Grid(long n, long[] seeds) => seeds.SelectMany(s => new List<StudyModel>
        {
            new($"adam-b256-s{s}", "adam", 256, 1e-3, s),
            new($"adam-b{n / 20}-s{s}", "adam", n / 20, 1e-3, s),
            new($"adam-b{n / 10}-s{s}", "adam", n / 10, 1e-3, s),
            new($"sgd-b256-s{s}", "sgd", 256, 0.05, s),
            new($"sgd-b{n / 10}-s{s}", "sgd", n / 10, 0.05, s),
            new($"sam-b256-s{s}", "sam", 256, 0.05, s, 0.05),
        }).ToList();
        return preset switch
        {
            "quick" => new StudyOptions
            {
                Preset = preset, Model = model, TrainExamples = 2000, TestExamples = 2000, StopAtLoss = 0.6, MaxEpochs = 4, MeasureExamples = 512,
                DensityRuns = 2, DensitySteps = 20, MaxProducts = 60, SlicePoints = 9, ContourPoints = 7, ParametricPoints = 9,
                Models = [new("adam-b64-s0", "adam", 64, 1e-3, 0), new("adam-b200-s0", "adam", 200, 1e-3, 0), new("sam-b64-s0", "sam", 64, 0.05, 0, 0.05)],
            },
            "full" => new StudyOptions { Preset = preset, Model = model, TrainExamples = 0, StopAtLoss = 0.15, MaxEpochs = 200, Models = Grid(60_000, [0, 1, 2]) },
            // One full grid for seed 0, and the two ends of Keskar's comparison again with seed 1 so that seed varies too.
            "default" => new StudyOptions
            {
                Preset = preset, Model = model,
                Models = [.. Grid(10_000, [0]), new("adam-b256-s1", "adam", 256, 1e-3, 1), new("adam-b1000-s1", "adam", 1000, 1e-3, 1)],
            },
            _ => throw new ValleyException($"--preset: quick, default or full, got '{preset}'"),
        };
    }
}
