using Valley.IO;
using System.Diagnostics;
using System.Text.Json;
using TorchSharp;
using TorchSharp.PyBridge;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.Models;
using Valley.Runs;
using static TorchSharp.torch;

namespace Valley.Training;

/// <summary>How <c>valley train</c> trains. Defaults give plain SGD with momentum 0.9; DESIGN.md §7 for SAM/ASAM.</summary>
public sealed record TrainOptions
{
    /// <summary>sgd, adam, sam or asam (SAM/ASAM wrap <see cref="BaseOptimizer"/>).</summary>
    public string Optimizer { get; init; } = "sgd";
    public string BaseOptimizer { get; init; } = "sgd";
    public double LearningRate { get; init; } = 0.01;
    public double Momentum { get; init; } = 0.9;
    public double WeightDecay { get; init; }
    /// <summary>ρ; null: 0.05 for SAM, 0.5 for ASAM.</summary>
    public double? Rho { get; init; }
    public double Eta { get; init; } = 0.01;
    /// <summary>m-sharpness: micro-batch size, each with its own perturbation (0 = the whole batch).</summary>
    public long MicroBatch { get; init; }
    /// <summary>Examples per step; 0 = full batch (gradient descent).</summary>
    public long BatchSize { get; init; } = 128;
    public int Epochs { get; init; } = 10;
    /// <summary>Stop after this many steps (0 = no limit).</summary>
    public long Steps { get; init; }
    /// <summary>Stop when the full training loss (eval mode, end of an epoch) falls below this value.</summary>
    public double? StopAtLoss { get; init; }
    public Schedule Schedule { get; init; } = Schedule.Constant;
    /// <summary>Average weights from this epoch on (SWA); null = off.</summary>
    public int? SwaStart { get; init; }
    /// <summary>λmax by Lanczos every this many steps (0 = off), on <see cref="MonitorExamples"/> fixed training examples.</summary>
    public long MonitorEvery { get; init; }
    public long MonitorExamples { get; init; } = 2048;
    public int CheckpointEvery { get; init; } = 1;
    public bool SavePyTorch { get; init; }
    public long Seed { get; init; }
    /// <summary>Examples per batch when evaluating (does not change results).</summary>
    public long EvalBatchSize { get; init; } = 2048;

    public void Validate(long trainCount)
    {
        if (Optimizer is not ("sgd" or "adam" or "sam" or "asam")) throw new ValleyException($"--optimizer: sgd, adam, sam or asam, got '{Optimizer}'");
        if (BaseOptimizer is not ("sgd" or "adam")) throw new ValleyException($"--base-optimizer: sgd or adam, got '{BaseOptimizer}'");
        if (!(LearningRate > 0) || !double.IsFinite(LearningRate)) throw new ValleyException($"--lr: must be a positive finite number, got {LearningRate}");
        if (!(Momentum >= 0 && Momentum < 1)) throw new ValleyException($"--momentum: must be in [0, 1), got {Momentum}");
        if (!(WeightDecay >= 0) || !double.IsFinite(WeightDecay)) throw new ValleyException($"--weight-decay: must be a non-negative finite number, got {WeightDecay}");
        if (Rho is { } r && (!(r >= 0) || !double.IsFinite(r))) throw new ValleyException($"--rho: must be a non-negative finite number, got {r}");
        if (!(Eta >= 0) || !double.IsFinite(Eta)) throw new ValleyException($"--eta: must be a non-negative finite number, got {Eta}");
        if (BatchSize < 0) throw new ValleyException($"--batch-size: must be positive, or 0 for full batch, got {BatchSize}");
        if (MicroBatch < 0) throw new ValleyException($"--m: must be positive (or 0 = whole batch), got {MicroBatch}");
        if (Epochs < 1 && Steps <= 0) throw new ValleyException($"--epochs: must be at least 1, got {Epochs}");
        if (Steps < 0) throw new ValleyException($"--steps: must be non-negative, got {Steps}");
        if (StopAtLoss is { } s && (!(s > 0) || !double.IsFinite(s))) throw new ValleyException($"--stop-at-loss: must be a positive finite number, got {s}");
        if (SwaStart is { } w && w < 1) throw new ValleyException($"--swa-start: epochs count from 1, got {w}");
        if (MonitorEvery < 0) throw new ValleyException($"--monitor-every: must be non-negative, got {MonitorEvery}");
        if (MonitorEvery > 0 && MonitorExamples < 1) throw new ValleyException($"--monitor-examples: must be at least 1, got {MonitorExamples}");
        if (EvalBatchSize < 1) throw new ValleyException($"evaluation batch size: must be at least 1, got {EvalBatchSize}");
        if (CheckpointEvery < 1) throw new ValleyException($"--checkpoint-every: must be at least 1, got {CheckpointEvery}");
        if (trainCount == 0) throw new ValleyException("the training set is empty");
        // Epochs are counted in an int: a step count beyond int.MaxValue epochs is no plan anyone can wait for.
        long batch = BatchSize == 0 ? trainCount : Math.Min(BatchSize, trainCount);
        long stepsPerEpoch = (trainCount + batch - 1) / batch;
        if (Steps / stepsPerEpoch >= int.MaxValue)
            throw new ValleyException($"--steps: {Steps} steps are {Steps / stepsPerEpoch} epochs of {stepsPerEpoch} steps; at most {int.MaxValue - 1} epochs");
    }

    public double EffectiveRho => Rho ?? (Optimizer == "asam" ? 0.5 : 0.05);
}

/// <summary>One row of the training log (end of an epoch).</summary>
public sealed record EpochRecord(int Epoch, long Step, double LearningRate, double TrainLoss, double? TrainAccuracy, double? TestLoss, double? TestAccuracy, double Seconds);

/// <summary>One sharpness-monitor reading.</summary>
public sealed record MonitorRecord(long Step, int Epoch, double LambdaMax, double RelativeResidual, double BatchLoss, long Products);

/// <summary>What a training run did; serialized as <c>train.json</c> (also the resume state).</summary>
public sealed record TrainingLog
{
    public required string Model { get; init; }
    public required TrainOptions Options { get; init; }
    /// <summary>
    /// The data (training and test sets) and the initial weights by content: <c>--resume</c> continues only a run of identical
    /// inputs. Null in a log written by an older version (such a run cannot be resumed).
    /// </summary>
    public RunInputs? Inputs { get; init; }
    public List<EpochRecord> Epochs { get; init; } = [];
    public List<MonitorRecord> Monitor { get; init; } = [];
    public int CompletedEpochs { get; set; }
    public long CompletedSteps { get; set; }
    public string? StopReason { get; set; }
    public bool Finished { get; set; }
    /// <summary>For full-batch gradient descent: 2/η, the Edge of Stability threshold (Cohen et al. 2021).</summary>
    public double? StabilityThreshold => Options.BatchSize == 0 && Options.Optimizer == "sgd" && Options.Momentum == 0 ? 2 / Options.LearningRate : null;
}

/// <summary>Progress of training, for progress bars.</summary>
public readonly record struct TrainProgress(int Epoch, int Epochs, long Step, long StepsPerEpoch, double RunningLoss, double? LambdaMax, EpochRecord? EpochEnd = null);

/// <summary>Raised when the loss becomes NaN or infinite; the last good checkpoint is kept.</summary>
public sealed class DivergenceException(string message) : ValleyException(message);

/// <summary>
/// Trains a model (SGD, Adam, SAM, ASAM, m-sharpness, SWA, schedules, sharpness monitor) with checkpoints that make runs
/// resumable: after every epoch the weights, the optimizer state, the SWA average and <c>train.json</c> are written
/// atomically; each epoch's shuffle depends only on (seed, epoch), so a resumed run ends with the same weights as an
/// uninterrupted one (same thread count, CPU).
/// </summary>
public sealed class Trainer
{
    public const string LastWeights = "last.dat";
    public const string StateFile = "train.json";

    readonly nn.Module<Tensor, Tensor> _model;
    readonly Dataset _train;
    readonly Dataset? _test;
    readonly TrainOptions _o;
    readonly string _dir;
    readonly string _modelName;

    public Trainer(nn.Module<Tensor, Tensor> model, string modelName, Dataset train, Dataset? test, TrainOptions options, string outDir)
    {
        options.Validate(train.Count);
        _model = model;
        _modelName = modelName;
        _train = train;
        _test = test;
        _o = options;
        _dir = outDir;
    }

    TorchSharp.Modules.OptimizerHelper MakeBase()
    {
        var ps = _model.parameters();
        string kind = _o.Optimizer is "sam" or "asam" ? _o.BaseOptimizer : _o.Optimizer;
        return kind == "adam"
            ? optim.Adam(ps, _o.LearningRate, weight_decay: _o.WeightDecay)
            : optim.SGD(ps, _o.LearningRate, momentum: _o.Momentum, weight_decay: _o.WeightDecay);
    }

    /// <summary>Train; with <paramref name="resume"/>, continue from the last checkpoint in the output folder.</summary>
    public TrainingLog Run(bool resume, IProgress<TrainProgress>? progress = null, CancellationToken ct = default)
    {
        Directory.CreateDirectory(Path.Combine(_dir, "checkpoints"));
        using var opt = MakeBase();
        var sam = _o.Optimizer is "sam" or "asam"
            ? new SharpnessAwareMinimization(_model, opt, new SamOptions { Rho = _o.EffectiveRho, Adaptive = _o.Optimizer == "asam", Eta = _o.Eta })
            : null;
        using var swa = _o.SwaStart is null ? null : new WeightAverage(_model);
        var inputs = new RunInputs()
            .With("initial weights", RunInputs.Digest(_model))
            .With("data", RunInputs.Digest(_train))
            .With("test data", _test is null ? "none" : RunInputs.Digest(_test));
        var log = new TrainingLog { Model = _modelName, Options = _o, Inputs = inputs };
        if (resume) log = Restore(opt, swa, inputs) ?? log;
        else if (File.Exists(Path.Combine(_dir, StateFile)))
            throw new ValleyException($"--out {_dir}: holds a training run already; pass --resume to continue it or choose another folder");
        if (log.Finished) return log;

        long batch = _o.BatchSize == 0 ? _train.Count : Math.Min(_o.BatchSize, _train.Count);
        long stepsPerEpoch = (_train.Count + batch - 1) / batch;
        long totalSteps = _o.Steps > 0 ? _o.Steps : stepsPerEpoch * _o.Epochs;
        int epochs = _o.Steps > 0 ? (int)(totalSteps / stepsPerEpoch + (totalSteps % stepsPerEpoch != 0 ? 1 : 0)) : _o.Epochs;
        var loss = Losses.For(_train.Task);
        var device = _model.parameters().First().device;
        using var monitorData = _o.MonitorEvery > 0 ? _train.Subset(Math.Min(_o.MonitorExamples, _train.Count), _o.Seed + 17) : null;
        var sw = Stopwatch.StartNew();
        double? lastLambda = log.Monitor.LastOrDefault()?.LambdaMax;

        for (int epoch = log.CompletedEpochs + 1; epoch <= epochs; epoch++)
        {
            _model.train();
            using var perm = randperm(_train.Count, generator: new Generator((ulong)(_o.Seed * 1_000_003 + epoch)));
            double running = 0;
            long seen = 0;
            for (long s = 0; s < _train.Count && log.CompletedSteps < totalSteps; s += batch)
            {
                ct.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                double lr = Schedules.At(_o.Schedule, _o.LearningRate, (double)log.CompletedSteps / totalSteps);
                foreach (var g in opt.ParamGroups) g.LearningRate = lr;
                long size = Math.Min(batch, _train.Count - s);
                var idx = perm.narrow(0, s, size);
                // The data stay in host memory; each batch moves to the model's device (a no-op on the CPU).
                var x = _train.X.index_select(0, idx).to(device);
                var y = _train.Y.index_select(0, idx).to(device);
                double l;
                if (sam is not null)
                {
                    long m = _o.MicroBatch > 0 ? Math.Min(_o.MicroBatch, size) : size;
                    var micro = new List<(Func<Tensor>, long)>();
                    for (long a = 0; a < size; a += m)
                    {
                        long ms = Math.Min(m, size - a);
                        var xm = x.narrow(0, a, ms);
                        var ym = y.narrow(0, a, ms);
                        micro.Add((() => loss(_model.call(xm), ym), ms));
                    }
                    l = sam.Step(micro);
                }
                else
                {
                    opt.zero_grad();
                    var lt = loss(_model.call(x), y);
                    lt.backward();
                    opt.step();
                    l = lt.ToDouble();
                }
                if (!double.IsFinite(l))
                {
                    // Before any step the learning rate is not to blame: the model's outputs overflow on these data.
                    if (log.CompletedSteps == 0)
                        throw new NonFiniteException($"{_train.Name}: the loss is {l} at the initial weights, before any step; the model's outputs overflow " +
                                                     "(rescale very large inputs, e.g. standardize them, or compute in float64)");
                    throw Diverged(log, $"at step {log.CompletedSteps + 1} (epoch {epoch}): the loss is {l}");
                }
                log.CompletedSteps++;
                running += l * size;
                seen += size;
                if (monitorData is not null && log.CompletedSteps % _o.MonitorEvery == 0)
                {
                    var rec = MonitorNow(monitorData, log.CompletedSteps, epoch, l);
                    log.Monitor.Add(rec);
                    lastLambda = rec.LambdaMax;
                    _model.train();
                }
                progress?.Report(new TrainProgress(epoch, epochs, log.CompletedSteps, stepsPerEpoch, running / seen, lastLambda));
            }
            // The last step of an epoch can blow the weights up although its loss (taken before the step) was finite.
            if (!WeightsFinite()) throw Diverged(log, $"at step {log.CompletedSteps} (epoch {epoch}): the weights became NaN or infinite");
            if (swa is not null && epoch >= _o.SwaStart) swa.Update(_model);
            EpochRecord rec2;
            try { rec2 = EvaluateEpoch(epoch, log.CompletedSteps, opt, sw.Elapsed.TotalSeconds); }
            catch (NonFiniteException) { throw Diverged(log, $"after epoch {epoch}: the training loss is not finite"); }
            log.Epochs.Add(rec2);
            progress?.Report(new TrainProgress(epoch, epochs, log.CompletedSteps, stepsPerEpoch, running / Math.Max(seen, 1), lastLambda, rec2));
            log.CompletedEpochs = epoch;
            bool stop = _o.StopAtLoss is { } target && rec2.TrainLoss < target;
            if (stop) log.StopReason = $"training loss {rec2.TrainLoss:G4} < {_o.StopAtLoss} after epoch {epoch}";
            bool last = stop || epoch == epochs || log.CompletedSteps >= totalSteps;
            Checkpoint(log, opt, swa, epoch, last);
            if (last) break;
        }
        if (swa is not null && swa.Count > 0)
        {
            swa.CopyTo(_model);
            WeightAverage.RecomputeBatchNorm(_model, _train, _o.EvalBatchSize);
            var rec = EvaluateEpoch(log.CompletedEpochs, log.CompletedSteps, opt, sw.Elapsed.TotalSeconds);
            log.Epochs.Add(rec with { Epoch = log.CompletedEpochs });
            log.StopReason = (log.StopReason is null ? "" : log.StopReason + "; ") + $"weights are the SWA average of {swa.Count} epochs";
        }
        log.StopReason ??= _o.Steps > 0 ? $"{_o.Steps} steps" : $"{epochs} epochs";
        log.Finished = true;
        Weights.Save(_model, Path.Combine(_dir, "model.dat"));
        if (_o.SavePyTorch) Weights.Save(_model, Path.Combine(_dir, "model.pt"));
        AtomicFile.WriteJson(Path.Combine(_dir, StateFile), log);
        WriteLogFiles(log);
        WritePlot(log);
        return log;
    }

    /// <summary>Records why training stopped (the last good checkpoint stays as it is) and makes the exception to throw.</summary>
    DivergenceException Diverged(TrainingLog log, string what)
    {
        log.StopReason = $"diverged {what}";
        AtomicFile.WriteJson(Path.Combine(_dir, StateFile), log);
        WritePlot(log);
        return new DivergenceException($"training diverged {what}. " + (log.CompletedEpochs > 0
            ? $"The last good checkpoint is {Path.Combine(_dir, LastWeights)} (epoch {log.CompletedEpochs}); lower --lr."
            : "No checkpoint had been written yet; lower --lr."));
    }

    bool WeightsFinite()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        return _model.parameters().All(p => isfinite(p).all().ToBoolean());
    }

    MonitorRecord MonitorNow(Dataset data, long step, int epoch, double batchLoss)
    {
        using var obj = new Objective(_model, Losses.For(data.Task), data, new ObjectiveOptions { BatchSize = Math.Max(data.Count, 1) });
        var op = new HessianOperator(obj);
        var r = Lanczos.Compute(op, new LanczosOptions { K = 1, Tolerance = 1e-3, MaxProducts = 200, Seed = step, VerifyResiduals = false });
        return new MonitorRecord(step, epoch, r.Values[0], r.RelativeResiduals[0], batchLoss, r.Products);
    }

    EpochRecord EvaluateEpoch(int epoch, long step, optim.Optimizer opt, double seconds)
    {
        using var obj = new Objective(_model, Losses.For(_train.Task), _train, new ObjectiveOptions { BatchSize = _o.EvalBatchSize });
        var tr = obj.Evaluate();
        var te = _test is null ? null : obj.Evaluate(_test);
        double lr = opt.ParamGroups.First().LearningRate;
        return new EpochRecord(epoch, step, lr, tr.Loss, tr.Accuracy, te?.Loss, te?.Accuracy, seconds);
    }

    /// <summary>The resume state of an epoch lives in files named after it, so train.json never points at newer or older files.</summary>
    string StatePath(string kind, int epoch) => Path.Combine(_dir, "resume", $"{kind}-{epoch:D4}{(kind == "weights" ? ".dat" : ".bin")}");

    void Checkpoint(TrainingLog log, TorchSharp.Modules.OptimizerHelper opt, WeightAverage? swa, int epoch, bool last)
    {
        // 1. This epoch's resume state under its own names; 2. train.json, atomically, naming the epoch (the commit point);
        // 3. only then the previous epoch's state is deleted. A kill at any moment leaves a consistent pair behind.
        Directory.CreateDirectory(Path.Combine(_dir, "resume"));
        Weights.Save(_model, StatePath("weights", epoch));
        SaveAtomically(StatePath("optimizer", epoch), opt.save_state_dict);
        if (swa is not null) SaveAtomically(StatePath("swa", epoch), swa.Save);
        if (epoch % _o.CheckpointEvery == 0 || last)
        {
            Weights.Save(_model, Path.Combine(_dir, "checkpoints", $"epoch-{epoch:D4}.dat"));
            if (_o.SavePyTorch) Weights.Save(_model, Path.Combine(_dir, "checkpoints", $"epoch-{epoch:D4}.pt"));
        }
        AtomicFile.WriteJson(Path.Combine(_dir, StateFile), log);
        foreach (var old in Directory.EnumerateFiles(Path.Combine(_dir, "resume")).Where(f => !Path.GetFileNameWithoutExtension(f).EndsWith($"-{epoch:D4}")))
            File.Delete(old);
        Weights.Save(_model, Path.Combine(_dir, LastWeights));
        WriteLogFiles(log);
    }

    static void SaveAtomically(string path, Action<string> save)
    {
        var tmp = path + $".{Environment.ProcessId}.tmp";
        save(tmp);
        File.Move(tmp, path, overwrite: true);
    }

    TrainingLog? Restore(TorchSharp.Modules.OptimizerHelper opt, WeightAverage? swa, RunInputs inputs)
    {
        var state = Path.Combine(_dir, StateFile);
        if (!File.Exists(state)) return null;
        TrainingLog log;
        try { log = JsonSerializer.Deserialize<TrainingLog>(File.ReadAllText(state), AtomicFile.Json) ?? throw new JsonException("empty"); }
        catch (JsonException e) { throw new ValleyException($"{state}: cannot resume, the training state is unreadable ({e.Message})", e); }
        if (log.Model != _modelName) throw new ValleyException($"--resume: {state} is a run of {log.Model}, not {_modelName}");
        if (log.Options with { Epochs = _o.Epochs, Steps = _o.Steps, StopAtLoss = _o.StopAtLoss } != _o with { })
            throw new ValleyException($"--resume: the options differ from those of the run in {_dir} (only --epochs, --steps and --stop-at-loss may change)");
        if (!inputs.SameAs(log.Inputs))
            throw new ValleyException($"--resume: the run in {_dir} was trained from other inputs ({inputs.DifferencesFrom(log.Inputs)}); choose another --out to train afresh");
        log = log with { Options = _o };
        if (log.CompletedEpochs == 0) return null;
        if (log.Finished && (_o.Steps > log.CompletedSteps || _o.Epochs > log.CompletedEpochs)) log.Finished = false;
        int done = log.CompletedEpochs;
        if (!File.Exists(StatePath("weights", done)) || !File.Exists(StatePath("optimizer", done)))
            throw new ValleyException($"--resume: {_dir} names epoch {done} but its resume files in {Path.Combine(_dir, "resume")} are missing");
        Weights.Load(_model, StatePath("weights", done));
        opt.load_state_dict(StatePath("optimizer", done));
        if (swa is not null && File.Exists(StatePath("swa", done))) swa.Load(StatePath("swa", done));
        return log;
    }

    void WriteLogFiles(TrainingLog log)
    {
        Csv.Write(Path.Combine(_dir, "log.csv"), ["epoch", "step", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"],
            log.Epochs.Select(e => new object[] { e.Epoch, e.Step, e.LearningRate, e.TrainLoss, (object?)e.TrainAccuracy ?? "", (object?)e.TestLoss ?? "", (object?)e.TestAccuracy ?? "", e.Seconds }));
        if (log.Monitor.Count > 0)
            Csv.Write(Path.Combine(_dir, "monitor.csv"), ["step", "epoch", "lambda_max", "relative_residual", "batch_loss", "products"],
                log.Monitor.Select(m => new object[] { m.Step, m.Epoch, m.LambdaMax, m.RelativeResidual, m.BatchLoss, m.Products }));
    }

    /// <summary>
    /// Called with the log when training stops (finished or diverged), e.g. to draw it: the figures live in
    /// Valley.Reporting, which the core library does not depend on.
    /// </summary>
    public Action<TrainingLog>? Stopped { get; init; }

    void WritePlot(TrainingLog log) => Stopped?.Invoke(log);
}
