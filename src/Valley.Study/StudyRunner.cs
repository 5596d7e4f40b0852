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
        var spec = new ModelSource(o.Model);
        var results = new List<ModelMeasurements>();
        var trained = new Dictionary<string, nn.Module<Tensor, Tensor>>();
        var mine = o.Models.Where((_, k) => k % group.Size == group.Rank).ToList();
        int total = mine.Count * 2;
        int step = 0;
        foreach (var m in mine)
        {
            ct.ThrowIfCancellationRequested();
            var dir = Path.Combine(outDir, "models", m.Name);
            progress?.Report(new StudyProgress($"training {m.Name}", step++, total));
            var model = (spec with { Seed = m.Seed }).Build(train);
            var log = new Trainer(model, train, new TrainOptions
            {
                Optimizer = Enum.Parse<Optimizer>(m.Optimizer, ignoreCase: true), BaseOptimizer = BaseOptimizer.Sgd, LearningRate = m.LearningRate, Momentum = 0.9,
                Rho = m.Rho, BatchSize = m.BatchSize, Epochs = o.MaxEpochs, StopAtLoss = o.StopAtLoss, Seed = m.Seed, CheckpointEvery = Math.Max(1, o.MaxEpochs),
            }, o.EffectiveLoss)
            { Test = test, OutputFolder = dir, ModelName = spec.Name, Stopped = l => Plots.Training(l, Path.Combine(dir, "training.png")) }
                .Run(resume: File.Exists(Path.Combine(dir, Trainer.StateFile)), ct: ct);
            trained[m.Name] = model;
            progress?.Report(new StudyProgress($"measuring {m.Name}", step++, total));
            var cache = Path.Combine(dir, "measures.json");
            ModelMeasurements? mm = null;
            if (File.Exists(cache))
                try { mm = JsonSerializer.Deserialize<ModelMeasurements>(File.ReadAllText(cache), AtomicFile.Json); } catch (JsonException) { mm = null; }
            if (mm is null)
            {
                mm = Measure(m, model, log, measureData, spec, train, o, ct);
                AtomicFile.WriteJson(cache, mm);
            }
            results.Add(mm);
        }
        if (group.Size > 1) results = Exchange(group, o, spec, train, results, trained);
        var ranking = StudyStatistics.Analyze(results, new StatisticsOptions { Seed = o.Seed }, ct);
        var findings = Findings.Write(results, ranking, o);
        var summary = new StudySummary { Options = o, Data = $"{train.Name} ({train.Count} training, {test.Count} test examples)", Models = results, Ranking = ranking, Findings = findings, Seconds = sw.Elapsed.TotalSeconds };
        if (group.IsRoot())
        {
            progress?.Report(new StudyProgress("figures and report", total, total));
            StudyFigures.WriteAll(summary, trained, train, test, measureData, outDir, ct);
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
    static List<ModelMeasurements> Exchange(IProcessGroup group, StudyOptions o, ModelSource spec, Dataset train, List<ModelMeasurements> mine,
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
                    var model = (spec with { Seed = long.Parse(mm.Hyperparameters["seed"], System.Globalization.CultureInfo.InvariantCulture) }).Build(train);
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

    static ModelMeasurements Measure(StudyModel m, nn.Module<Tensor, Tensor> model, TrainingLog log, Dataset measureData, ModelSource spec, Dataset train, StudyOptions o, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        var last = log.Epochs[^1];
        var measures = new Dictionary<string, double>();
        var errors = new Dictionary<string, double>();
        using var obj = new Objective(model, o.EffectiveLoss, measureData, new ObjectiveOptions { BatchSize = measureData.Count });
        var op = new HessianOperator(obj) { Cancellation = ct };
        var top = Lanczos.Compute(op, new LanczosOptions { K = 5, Tolerance = 1e-3, MaxProducts = o.MaxProducts, Seed = m.Seed }, ct: ct);
        measures["lambda_max"] = top.Values[0];
        measures["top5_sum"] = top.Values.Sum();
        var tr = HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { RelativeStandardError = 0.05, MaxProducts = o.MaxProducts, Seed = m.Seed }, ct: ct);
        measures["trace"] = tr.Trace;
        errors["trace"] = tr.StandardError;
        var density = StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Runs = o.DensityRuns, Steps = o.DensitySteps, Seed = m.Seed }, ct: ct);
        measures["negative_mass"] = density.NegativeMass;
        using var init = (spec with { Seed = m.Seed }).Initialization(train);
        var suite = SharpnessSuite.Run(obj, new SharpnessSuiteOptions
        {
            Measures = [SharpnessMeasures.Keskar, SharpnessMeasures.Sam, SharpnessMeasures.WorstCaseL2Adaptive, SharpnessMeasures.AverageCaseAdaptive,
                        SharpnessMeasures.PacBayes, SharpnessMeasures.FisherTrace, SharpnessMeasures.RelativeFlatness],
            Seed = m.Seed, Initialization = init,
        }, ct: ct);
        foreach (var r in suite)
        {
            string key = r.Measure == "keskar" ? $"keskar_eps{r.Parameters["epsilon"]:0e0}" : r.Measure.Replace('-', '_');
            measures[key] = r.Value;
            if (r.StandardError is { } se && double.IsFinite(se)) errors[key] = se;
        }
        // Baselines (Jiang et al. 2020): the margin on the measures' training examples, steps to the stopping rule from the log.
        var baselines = Valley.Generalization.GeneralizationBaselines.Compute(model, measureData,
            new Valley.Generalization.BaselineOptions { Initialization = init, Steps = log.CompletedSteps }, ct);
        return new ModelMeasurements
        {
            Name = m.Name, Hyperparameters = m.Hyperparameters, Epochs = log.CompletedEpochs,
            TrainLoss = last.TrainLoss, TrainAccuracy = last.TrainAccuracy ?? 0, TestLoss = last.TestLoss ?? 0, TestAccuracy = last.TestAccuracy ?? 0,
            Measures = measures, StandardErrors = errors, Baselines = baselines.Values(), BaselineNotes = baselines.Notes, TopEigenvalues = top.Values, DensityNodes = density.Nodes, DensityWeights = density.Weights,
            Seconds = sw.Elapsed.TotalSeconds,
        };
    }

    static void WriteCsv(StudySummary s, string path)
    {
        var keys = s.Models.SelectMany(m => m.Measures.Keys).Distinct().ToList();
        var baselineKeys = s.Models.SelectMany(m => m.Baselines.Keys).Distinct().Where(k => !keys.Contains(k)).ToList();
        Csv.Write(path, new[] { "model", "optimizer", "batch_size", "seed", "epochs", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "loss_gap", "accuracy_gap" }.Concat(keys).Concat(baselineKeys).ToList(),
            s.Models.Select(m => new object[] { m.Name, m.Hyperparameters["optimizer"], m.Hyperparameters["batch_size"], m.Hyperparameters["seed"], m.Epochs,
                m.TrainLoss, m.TrainAccuracy, m.TestLoss, m.TestAccuracy, m.LossGap, m.AccuracyGap }.Concat(keys.Select(k => (object)m.Measures.GetValueOrDefault(k, double.NaN)))
                .Concat(baselineKeys.Select(k => (object)m.Baselines.GetValueOrDefault(k, double.NaN)))));
    }
}
