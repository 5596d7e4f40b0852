using Valley.IO;
using System.Diagnostics;
using System.Text.Json;
using TorchSharp;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.Distributed;
using Valley.Landscape;
using Valley.Models;
using Valley.Reporting;
using Valley.Sharpness;
using Valley.Training;
using static TorchSharp.torch;

namespace Valley.Study;

/// <summary>Everything measured for one trained model.</summary>
public sealed record ModelMeasurements
{
    /// <summary>The model's name in the grid (e.g. adam-b256-s0).</summary>
    public required string Name { get; init; }
    /// <summary>The hyperparameters that vary across the study (for the granulated τ).</summary>
    public required Dictionary<string, string> Hyperparameters { get; init; }
    /// <summary>Epochs trained until the stopping rule.</summary>
    public required int Epochs { get; init; }
    /// <summary>Optimization steps of training (for a model loaded from a zoo: its models.csv "steps", when given).</summary>
    public long? Steps { get; init; }
    /// <summary>Full training loss at the end.</summary>
    public required double TrainLoss { get; init; }
    /// <summary>Training accuracy at the end.</summary>
    public required double TrainAccuracy { get; init; }
    /// <summary>Test loss at the end.</summary>
    public required double TestLoss { get; init; }
    /// <summary>Test accuracy at the end.</summary>
    public required double TestAccuracy { get; init; }
    /// <summary>Generalization gap of the loss: test minus training.</summary>
    public double LossGap => TestLoss - TrainLoss;
    /// <summary>Generalization gap of the accuracy: training minus test.</summary>
    public double AccuracyGap => TrainAccuracy - TestAccuracy;
    /// <summary>Measure name → value (larger = sharper, except the flatness measures, where larger = flatter by name).</summary>
    public required Dictionary<string, double> Measures { get; init; }
    /// <summary>
    /// Baseline name → value, oriented larger = more complex (<see cref="Valley.Generalization.BaselineResult.Values"/>): parameter norm,
    /// distance from initialization, products of spectral and Frobenius norms, path norm, negated 10th-percentile margin, steps.
    /// Baselines undefined for the model are absent (see <see cref="BaselineNotes"/>).
    /// </summary>
    public Dictionary<string, double> Baselines { get; init; } = [];
    /// <summary>Baseline name → why it is undefined for this model.</summary>
    public Dictionary<string, string> BaselineNotes { get; init; } = [];
    /// <summary>Measure name → standard error, for the measures that are estimates.</summary>
    public required Dictionary<string, double> StandardErrors { get; init; }
    /// <summary>The top-5 Hessian eigenvalues.</summary>
    public double[] TopEigenvalues { get; init; } = [];
    /// <summary>SLQ quadrature nodes of each run.</summary>
    public double[][] DensityNodes { get; init; } = [];
    /// <summary>SLQ quadrature weights of each run.</summary>
    public double[][] DensityWeights { get; init; } = [];
    /// <summary>Seconds the measurements took.</summary>
    public double Seconds { get; init; }
}

/// <summary>What a study found: the models' measurements, the rank correlations and the findings; serialized as summary.json.</summary>
public sealed record StudySummary
{
    /// <summary>The study's options.</summary>
    public required StudyOptions Options { get; init; }
    /// <summary>The data, described.</summary>
    public required string Data { get; init; }
    /// <summary>Every model's measurements, in the grid's order.</summary>
    public required List<ModelMeasurements> Models { get; init; }
    /// <summary>Every measure's and baseline's rank correlations with the gaps, with intervals, best first.</summary>
    public required RankingAnalysis Ranking { get; init; }
    /// <summary>Findings in plain language, only as strong as the numbers allow.</summary>
    public required List<string> Findings { get; init; }
    /// <summary>Wall time of the study.</summary>
    public double Seconds { get; init; }
    /// <summary>What the study left out and why (e.g. a figure that needs an Adam small/large-batch pair).</summary>
    public List<string> Notes { get; init; } = [];
}

/// <summary>Progress of a study: the current stage and how many of the stages are done.</summary>
public readonly record struct StudyProgress(string Stage, int Done, int Total);

/// <summary>
/// The seed claim on real data (docs/design.md §8): trains the study's models (resumable), measures every measure on each
/// (cached per model), relates them to the generalization gap by Kendall τ, draws the figures and writes the report.
/// With a group of ranks, model k is trained and measured by rank k mod Size (each rank holds all the data); rank 0 gathers
/// the measurements and the trained weights, and writes the figures and the report. Every rank returns the same summary.
/// </summary>
public static class StudyRunner
{
    /// <summary>
    /// What a model's cached measurements contain; part of a study folder's inputs, so that a folder of an earlier format
    /// (e.g. without baselines, or with Hutch++ traces) is refused rather than mixed into a new study. Change it whenever
    /// <see cref="ModelMeasurements"/> or the way a measure is computed changes.
    /// </summary>
    public const string MeasurementsFormat = "5: baselines, exact trace of Linear stacks (XTrace otherwise), negative mass with its error, spectrum seeded as valley hessian";

    /// <summary>Runs a study into <paramref name="outDir"/> (resumable: trained models and finished measurements are reused) and returns its summary.</summary>
    public static StudySummary Run(StudyOptions o, DataSplit data, string outDir, IProgress<StudyProgress>? progress = null, CancellationToken ct = default,
        IProcessGroup? group = null)
    {
        group ??= SingleProcess.Instance;
        if (o.Models.Count < 2) throw new ValleyException("study: at least two models are needed");
        if (data.Test is null) throw new ValleyException("study: the data have no test set (needed for the generalization gap)");
        var sw = Stopwatch.StartNew();
        Directory.CreateDirectory(outDir);
        using var train = o.TrainExamples > 0 && o.TrainExamples < data.Train.Count ? data.Train.Subset(o.TrainExamples, o.Seed) : data.Train.Subset(data.Train.Count, o.Seed);
        using var test = o.TestExamples > 0 && o.TestExamples < data.Test.Count ? data.Test.Subset(o.TestExamples, o.Seed) : data.Test.Subset(data.Test.Count, o.Seed);
        using var measureData = train.Subset(Math.Min(o.MeasureExamples, train.Count), o.Seed + 1);
        var results = new List<ModelMeasurements>();
        var trained = new Dictionary<string, nn.Module<Tensor, Tensor>>();
        var mine = o.Models.Where((_, k) => k % group.Size == group.Rank).ToList();
        int total = mine.Count * 2;
        int step = 0;
        foreach (var m in mine)
        {
            ct.ThrowIfCancellationRequested();
            var dir = Path.Combine(outDir, "models", m.Name);
            var spec = new ModelSource(o.ArchitectureOf(m));
            // A model's own training set is a seeded subset of the study's: with one seed, a smaller one lies inside a larger one.
            using var own = m.TrainExamples is { } n && n < train.Count ? train.Subset(n, o.Seed) : null;
            var modelTrain = own ?? train;
            using var ownMeasure = own is null ? null : modelTrain.Subset(Math.Min(o.MeasureExamples, modelTrain.Count), o.Seed + 1);
            var modelMeasureData = ownMeasure ?? measureData;
            nn.Module<Tensor, Tensor> model;
            Fit fit;
            if (m.IsLoaded)
            {
                // A model trained elsewhere: loaded (the weights checked against the architecture) and evaluated, never trained.
                progress?.Report(new StudyProgress($"loading {m.Name}", step++, total));
                model = (spec with { WeightsPath = m.Weights }).Build(modelTrain);
                using var eval = new Objective(model, o.EffectiveLoss, modelTrain, new ObjectiveOptions { BatchSize = 2048 });
                var tr = eval.Evaluate(ct);
                var te = eval.Evaluate(test, ct);
                fit = new Fit(0, m.Steps, tr.Loss, tr.Accuracy ?? 0, te.Loss, te.Accuracy ?? 0);
            }
            else
            {
                progress?.Report(new StudyProgress($"training {m.Name}", step++, total));
                model = (spec with { Seed = m.Seed }).Build(modelTrain);
                var log = new Trainer(model, modelTrain, new TrainOptions
                {
                    Optimizer = Enum.Parse<Optimizer>(m.Optimizer, ignoreCase: true), BaseOptimizer = BaseOptimizer.Sgd, LearningRate = m.LearningRate, Momentum = o.Momentum,
                    WeightDecay = m.WeightDecay, Rho = m.Rho, BatchSize = m.BatchSize, Epochs = o.MaxEpochs, StopAtLoss = o.StopAtLoss, Seed = m.Seed,
                    CheckpointEvery = Math.Max(1, o.MaxEpochs),
                }, o.EffectiveLoss)
                { Test = test, OutputFolder = dir, ModelName = spec.Name, Stopped = l => Plots.Training(l, Path.Combine(dir, "training.png")) }
                    .Run(resume: File.Exists(Path.Combine(dir, Trainer.StateFile)), ct: ct);
                var last = log.Epochs[^1];
                fit = new Fit(log.CompletedEpochs, log.CompletedSteps, last.TrainLoss, last.TrainAccuracy ?? 0, last.TestLoss ?? 0, last.TestAccuracy ?? 0);
            }
            trained[m.Name] = model;
            progress?.Report(new StudyProgress($"measuring {m.Name}", step++, total));
            var cache = Path.Combine(dir, "measures.json");
            ModelMeasurements? mm = null;
            if (File.Exists(cache))
                try { mm = JsonSerializer.Deserialize<ModelMeasurements>(File.ReadAllText(cache), AtomicFile.Json); } catch (JsonException) { mm = null; }
            // The measurements are the cache's; the hyperparameters are the study's (one spec names them).
            if (mm is not null) mm = mm with { Hyperparameters = m.Hyperparameters };
            if (mm is null)
            {
                mm = Measure(m, model, fit, modelMeasureData, spec, modelTrain, o, ct);
                AtomicFile.WriteJson(cache, mm);
            }
            results.Add(mm);
        }
        if (group.Size > 1) results = Exchange(group, o, train, results, trained);
        var ranking = StudyStatistics.Analyze(results, new StatisticsOptions { Seed = o.Seed }, ct);
        var findings = Findings.Write(results, ranking, o);
        var summary = new StudySummary { Options = o, Data = $"{train.Name} ({train.Count} training, {test.Count} test examples)", Models = results, Ranking = ranking, Findings = findings, Seconds = sw.Elapsed.TotalSeconds };
        if (group.IsRoot())
        {
            progress?.Report(new StudyProgress("figures and report", total, total));
            summary = summary with { Notes = StudyFigures.WriteAll(summary, trained, train, test, measureData, outDir, ct) };
            AtomicFile.WriteJson(Path.Combine(outDir, "summary.json"), summary);
            WriteCsv(summary, Path.Combine(outDir, "results.csv"));
            AtomicFile.WriteAllText(Path.Combine(outDir, "report.html"), StudyReport.Html(summary, outDir));
        }
        group.Barrier();
        return summary;
    }

    /// <summary>
    /// Brings every rank's models to rank 0 (measurements as JSON, weights and buffers as float64 in state_dict order, loaded
    /// into a fresh model of the same spec) and every model's measurements to every rank, in the study's model order.
    /// </summary>
    static List<ModelMeasurements> Exchange(IProcessGroup group, StudyOptions o, Dataset train, List<ModelMeasurements> mine,
        Dictionary<string, nn.Module<Tensor, Tensor>> trained)
    {
        using var stream = new MemoryStream();
        using (var w = new BinaryWriter(stream, System.Text.Encoding.UTF8, leaveOpen: true))
        {
            w.Write(mine.Count);
            foreach (var mm in mine)
            {
                w.Write(JsonSerializer.Serialize(mm, AtomicFile.Json));
                var state = trained[mm.Name].state_dict().Values.Select(t => t.detach().to(ScalarType.Float64).cpu().reshape(-1).data<double>().ToArray()).ToList();
                w.Write(state.Count);
                foreach (var v in state) { w.Write(v.Length); foreach (var x in v) w.Write(x); }
            }
        }
        var all = group.Gather(stream.ToArray());
        var byName = new Dictionary<string, ModelMeasurements>();
        if (all is not null)
            for (int r = 0; r < all.Length; r++)
            {
                if (r == group.Rank) { foreach (var mm in mine) byName[mm.Name] = mm; continue; }
                using var reader = new BinaryReader(new MemoryStream(all[r]));
                int count = reader.ReadInt32();
                for (int k = 0; k < count; k++)
                {
                    var mm = JsonSerializer.Deserialize<ModelMeasurements>(reader.ReadString(), AtomicFile.Json)!;
                    // A fresh model of the same architecture: every weight and buffer is overwritten below.
                    var model = new ModelSource(o.ArchitectureOf(o.Models.First(x => x.Name == mm.Name))).Build(train);
                    var tensors = model.state_dict().Values.ToList();
                    int n = reader.ReadInt32();
                    if (n != tensors.Count) throw new ValleyException($"study: rank {r} sent {n} tensors for {mm.Name}, the model has {tensors.Count}");
                    using (no_grad())
                        foreach (var t in tensors)
                        {
                            var v = new double[reader.ReadInt32()];
                            for (int i = 0; i < v.Length; i++) v[i] = reader.ReadDouble();
                            using var src = OwnedTensor.From(v);
                            t.copy_(src.reshape(t.shape).to(t.dtype));
                        }
                    trained[mm.Name] = model;
                    byName[mm.Name] = mm;
                }
            }
        // Rank 0 now has every model's measurements: every rank gets them, in the study's order.
        var json = group.Broadcast(group.IsRoot() ? JsonSerializer.SerializeToUtf8Bytes(o.Models.Select(m => byName[m.Name]).ToList(), AtomicFile.Json) : []);
        return JsonSerializer.Deserialize<List<ModelMeasurements>>(json, AtomicFile.Json)!;
    }

    /// <summary>How a model fits: epochs and steps of training (0 and the models.csv steps for a loaded model), losses and accuracies.</summary>
    internal readonly record struct Fit(int Epochs, long? Steps, double TrainLoss, double TrainAccuracy, double TestLoss, double TestAccuracy);

    /// <summary>
    /// Every measure of the options on one model. The curvature measures run as <c>valley hessian --top 5 --trace --density</c>
    /// does (<see cref="SpectrumAnalysis"/>, with the model's seed) and the sharpness measures as <c>valley sharpness</c> does
    /// (<see cref="SharpnessSuite"/>), so that each model's numbers are those of the per-model commands with the same seed.
    /// </summary>
    static ModelMeasurements Measure(StudyModel m, nn.Module<Tensor, Tensor> model, Fit fit, Dataset measureData, ModelSource spec, Dataset train, StudyOptions o, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        var measures = new Dictionary<string, double>();
        var errors = new Dictionary<string, double>();
        using var obj = new Objective(model, o.EffectiveLoss, measureData, new ObjectiveOptions { BatchSize = measureData.Count });
        var op = new HessianOperator(obj) { Cancellation = ct };
        var names = o.Measures.ToHashSet();
        bool top = names.Contains("lambda_max") || names.Contains("top5_sum"), trace = names.Contains("trace"), density = names.Contains("negative_mass");
        SpectrumReport? spectrum = null;
        if (top || trace || density)
        {
            spectrum = SpectrumAnalysis.Run(op, new SpectrumAnalysisOptions
            {
                Top = top ? (int)Math.Min(5, op.Size) : 0, Bottom = 0, Trace = trace, Density = density, Tolerance = 1e-3, TraceRelativeError = o.TraceRelativeError,
                TraceMethod = TraceMethod.Auto, MaxProducts = o.MaxProducts, DensityRuns = o.DensityRuns, DensitySteps = o.DensitySteps, Seed = m.Seed,
            }, ct: ct);
            if (names.Contains("lambda_max")) measures["lambda_max"] = spectrum.Top!.Values[0];
            if (names.Contains("top5_sum")) measures["top5_sum"] = spectrum.Top!.Values.Sum();
            // An exact trace (a stack of Linear layers) has no sampling error to record.
            if (trace) { measures["trace"] = spectrum.Trace!.Trace; if (spectrum.Trace.Method != "exact") errors["trace"] = spectrum.Trace.StandardError; }
            if (density)
            {
                measures["negative_mass"] = spectrum.Density!.NegativeMass;
                if (double.IsFinite(spectrum.Density.NegativeMassStandardError)) errors["negative_mass"] = spectrum.Density.NegativeMassStandardError;
            }
        }
        // w₀: a trained model's seeded initialization (what training started from); a loaded model's init weights when models.csv gives them.
        using var init = m.IsLoaded
            ? m.Initialization is { } initPath ? (spec with { WeightsPath = initPath }).Build(train) : null
            : (spec with { Seed = m.Seed }).Initialization(train);
        obj.ReleaseGraphs(); // the sharpness measures move the weights: the cached graphs would be rebuilt anyway, and they hold memory
        var sharpness = o.Measures.Where(n => !StudyOptions.CurvatureMeasures.Contains(n)).Select(SharpnessMeasures.Get).ToList();
        if (sharpness.Count > 0)
        {
            var suite = SharpnessSuite.Run(obj, new SharpnessSuiteOptions
            {
                Measures = sharpness, Epsilons = o.Epsilons, Rho = o.SharpnessRho, Steps = o.SharpnessSteps, Samples = o.SharpnessSamples, Seed = m.Seed, Initialization = init,
            }, ct: ct);
            foreach (var r in suite)
            {
                string key = MeasureKey(r);
                measures[key] = r.Value;
                if (r.StandardError is { } se && double.IsFinite(se)) errors[key] = se;
            }
        }
        // Baselines (Jiang et al. 2020): the margin on the measures' training examples, steps to the stopping rule from the log.
        var baselines = Valley.Generalization.GeneralizationBaselines.Compute(model, measureData,
            new Valley.Generalization.BaselineOptions { Initialization = init, Steps = fit.Steps }, ct);
        return new ModelMeasurements
        {
            Name = m.Name, Hyperparameters = m.Hyperparameters, Epochs = fit.Epochs, Steps = fit.Steps,
            TrainLoss = fit.TrainLoss, TrainAccuracy = fit.TrainAccuracy, TestLoss = fit.TestLoss, TestAccuracy = fit.TestAccuracy,
            Measures = measures, StandardErrors = errors, Baselines = baselines.Values(), BaselineNotes = baselines.Notes, TopEigenvalues = spectrum?.Top?.Values ?? [], DensityNodes = spectrum?.Density?.Nodes ?? [],
            DensityWeights = spectrum?.Density?.Weights ?? [], Seconds = sw.Elapsed.TotalSeconds,
        };
    }

    /// <summary>A sharpness result's column in the study: "keskar_eps1e-3" for Keskar's, the measure's name in snake case otherwise.</summary>
    internal static string MeasureKey(SharpnessResult r) =>
        r.Measure == "keskar" ? $"keskar_eps{r.Parameters["epsilon"].ToString("0e0", System.Globalization.CultureInfo.InvariantCulture)}" : r.Measure.Replace('-', '_');

    static void WriteCsv(StudySummary s, string path)
    {
        var keys = s.Models.SelectMany(m => m.Measures.Keys).Distinct().ToList();
        var baselineKeys = s.Models.SelectMany(m => m.Baselines.Keys).Distinct().Where(k => !keys.Contains(k)).ToList();
        var hyper = s.Models.SelectMany(m => m.Hyperparameters.Keys).Distinct().ToList();
        Csv.Write(path, new[] { "model" }.Concat(hyper).Concat(["epochs", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "loss_gap", "accuracy_gap"]).Concat(keys).Concat(baselineKeys).ToList(),
            s.Models.Select(m => new object[] { m.Name }.Concat(hyper.Select(h => (object)m.Hyperparameters.GetValueOrDefault(h, ""))).Concat([m.Epochs,
                m.TrainLoss, m.TrainAccuracy, m.TestLoss, m.TestAccuracy, m.LossGap, m.AccuracyGap]).Concat(keys.Select(k => (object)m.Measures.GetValueOrDefault(k, double.NaN)))
                .Concat(baselineKeys.Select(k => (object)m.Baselines.GetValueOrDefault(k, double.NaN)))));
    }
}
