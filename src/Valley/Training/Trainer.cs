using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using TorchSharp;
using TorchSharp.Modules;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.IO;
using Valley.Models;
using Valley.Runs;
using static TorchSharp.torch;

namespace Valley.Training;

/// <summary>
/// Trains a model (SGD, Adam, SAM, ASAM, m-sharpness, SWA, schedules, sharpness monitor). Each epoch's shuffle depends only
/// on (seed, epoch). With an <see cref="OutputFolder"/> the run is resumable: after every epoch the weights, the optimizer
/// state, the SWA average and <c>train.json</c> are written atomically, and a resumed run ends with the same weights as an
/// uninterrupted one (same thread count, CPU). Without one, nothing is written and the model is trained in memory.
/// </summary>
public sealed class Trainer
{
    /// <summary>The weights of the last finished epoch, in the output folder.</summary>
    public const string LastWeights = "last.dat";

    /// <summary>The training log and resume state, in the output folder.</summary>
    public const string StateFile = "train.json";

    readonly nn.Module<Tensor, Tensor> _model;
    readonly Dataset _train;
    readonly TrainOptions _o;
    readonly LossFunction _loss;

    /// <summary>
    /// A trainer of <paramref name="model"/> on <paramref name="train"/>. <paramref name="options"/> are checked here
    /// (<see cref="TrainOptions.Validate"/>); <paramref name="loss"/> defaults to the task's (<see cref="Losses.For"/>).
    /// A resumed run must be given the same loss: it is the caller's code and is not recorded.
    /// </summary>
    public Trainer(nn.Module<Tensor, Tensor> model, Dataset train, TrainOptions? options = null, LossFunction? loss = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(train);
        options ??= new TrainOptions();
        options.Validate(train.Count);
        _model = model;
        _train = train;
        _o = options;
        _loss = loss ?? Losses.For(train.Task);
        ModelName = model.GetName();
    }

    /// <summary>The options.</summary>
    public TrainOptions Options => _o;

    /// <summary>The loss that is minimized, also the one the epoch records and the monitor report.</summary>
    public LossFunction Loss => _loss;

    /// <summary>Data evaluated (loss, accuracy) after every epoch besides the training set; null = none.</summary>
    public Dataset? Test { get; init; }

    /// <summary>
    /// Where checkpoints, the log and the final weights go (and a run is resumed from); null = no files and no resume.
    /// </summary>
    public string? OutputFolder { get; init; }

    /// <summary>The name recorded in the log (e.g. the model spec); a run resumes only with the same name. Default: the module's name.</summary>
    public string ModelName { get; init; }

    /// <summary>
    /// Called with the log when training stops (finished or diverged), e.g. to draw it: the figures live in
    /// Valley.Reporting, which the core library does not depend on.
    /// </summary>
    public Action<TrainingLog>? Stopped { get; init; }

    /// <summary>What one run of <see cref="Run"/> works with.</summary>
    sealed class Session(TrainingLog log, optim.Optimizer optimizer, TrainingPlan plan, WeightAverage? swa, Dataset? monitorData,
                         IProgress<TrainProgress>? progress, CancellationToken ct)
    {
        public readonly TrainingLog Log = log;
        public readonly optim.Optimizer Optimizer = optimizer;
        public readonly TrainingPlan Plan = plan;
        public readonly WeightAverage? Swa = swa;
        public readonly Dataset? MonitorData = monitorData;
        public readonly IProgress<TrainProgress>? Progress = progress;
        public readonly CancellationToken Ct = ct;
        public readonly Stopwatch Clock = Stopwatch.StartNew();
        public double? LastLambda = log.Monitor.LastOrDefault()?.LambdaMax;
    }

    /// <summary>
    /// Trains. With <paramref name="resume"/>, continues the run in <see cref="OutputFolder"/> from its last checkpoint (or
    /// starts it, if there is none); without, a folder that holds a run is refused.
    /// </summary>
    /// <exception cref="DivergenceException">The loss or the weights became NaN or infinite.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="ct"/> was cancelled (the last checkpoint stays).</exception>
    public TrainingLog Run(bool resume = false, IProgress<TrainProgress>? progress = null, CancellationToken ct = default)
    {
        if (resume && OutputFolder is null) throw new ArgumentException("a run without an output folder cannot be resumed", nameof(resume));
        Objective.CheckModelFits(_model, _loss, _train);
        using var baseOptimizer = MakeBaseOptimizer();
        using var sam = MakeSam(baseOptimizer);
        using var swa = _o.SwaStart is null ? null : new WeightAverage(_model);
        var log = Start(resume, baseOptimizer, swa);
        if (log.Finished) return log;
        using var monitorData = _o.MonitorEvery > 0 ? _train.Subset(Math.Min(_o.MonitorExamples, _train.Count), _o.Seed + 17) : null;
        var s = new Session(log, (optim.Optimizer?)sam ?? baseOptimizer, TrainingPlan.For(_o, _train.Count), swa, monitorData, progress, ct);
        for (int epoch = log.CompletedEpochs + 1; epoch <= s.Plan.Epochs; epoch++)
        {
            double running = TrainEpoch(s, epoch);
            if (EndEpoch(s, epoch, running, baseOptimizer)) break;
        }
        Finish(s);
        return s.Log;
    }

    OptimizerHelper MakeBaseOptimizer()
    {
        var ps = _model.parameters();
        var kind = _o.Optimizer switch
        {
            Optimizer.Sam or Optimizer.Asam => _o.BaseOptimizer,
            Optimizer.Adam => BaseOptimizer.Adam,
            _ => BaseOptimizer.Sgd,
        };
        return kind == BaseOptimizer.Adam
            ? optim.Adam(ps, _o.LearningRate, weight_decay: _o.WeightDecay)
            : optim.SGD(ps, _o.LearningRate, momentum: _o.Momentum, weight_decay: _o.WeightDecay);
    }

    SharpnessAwareMinimization? MakeSam(OptimizerHelper baseOptimizer) => _o.Optimizer switch
    {
        Optimizer.Sam => new SharpnessAwareMinimization(_model, baseOptimizer, SamOptions.ForSam(_o.EffectiveRho)),
        Optimizer.Asam => new SharpnessAwareMinimization(_model, baseOptimizer, SamOptions.ForAsam(_o.EffectiveRho, _o.Eta)),
        _ => null,
    };

    /// <summary>A fresh log, or the restored one of the run being resumed (weights, optimizer state and SWA average loaded).</summary>
    TrainingLog Start(bool resume, OptimizerHelper optimizer, WeightAverage? swa)
    {
        var inputs = new RunInputs()
            .With("initial weights", RunInputs.Digest(_model))
            .With("data", RunInputs.Digest(_train))
            .With("loss", Losses.NameOf(_loss) ?? "the caller's")
            .With("test data", Test is null ? "none" : RunInputs.Digest(Test));
        var fresh = new TrainingLog { Model = ModelName, Options = _o, Inputs = inputs };
        if (OutputFolder is not { } dir) return fresh;
        if (!resume)
        {
            if (File.Exists(Path.Combine(dir, StateFile)))
                throw new ArgumentException($"{dir} holds a training run already: resume it, or train into another folder", nameof(resume));
            return fresh;
        }
        return Restore(dir, optimizer, swa, inputs) ?? fresh;
    }

    /// <summary>One epoch of steps in the order of the epoch's shuffle; returns the mean batch loss.</summary>
    double TrainEpoch(Session s, int epoch)
    {
        _model.train();
        using var order = randperm(_train.Count, generator: new Generator((ulong)(_o.Seed * 1_000_003 + epoch)));
        double running = 0;
        long seen = 0;
        var device = _model.parameters().First().device;
        for (long start = 0; start < _train.Count && s.Log.CompletedSteps < s.Plan.TotalSteps; start += s.Plan.Batch)
        {
            s.Ct.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            double lr = Schedules.At(_o.Schedule, _o.LearningRate, (double)s.Log.CompletedSteps / s.Plan.TotalSteps);
            foreach (var g in s.Optimizer.ParamGroups) g.LearningRate = lr;
            long size = Math.Min(s.Plan.Batch, _train.Count - start);
            var idx = order.narrow(0, start, size);
            // The data stay in host memory; each batch moves to the model's device (a no-op on the CPU).
            double loss = Step(s.Optimizer, _train.X.index_select(0, idx).to(device), _train.Y.index_select(0, idx).to(device));
            EnsureFinite(s, loss, epoch);
            s.Log.CompletedSteps++;
            running += loss * size;
            seen += size;
            MonitorIfDue(s, epoch, loss);
            s.Progress?.Report(new TrainProgress(epoch, s.Plan.Epochs, s.Log.CompletedSteps, s.Plan.StepsPerEpoch, running / seen, s.LastLambda));
        }
        return running / Math.Max(seen, 1);
    }

    /// <summary>One optimizer step on a batch; returns the batch's loss at the weights before the step.</summary>
    double Step(optim.Optimizer optimizer, Tensor x, Tensor y)
    {
        if (optimizer is SharpnessAwareMinimization sam)
        {
            long size = x.shape[0];
            long m = _o.MicroBatch > 0 ? Math.Min(_o.MicroBatch, size) : size;
            var micro = new List<MicroBatch>();
            for (long a = 0; a < size; a += m)
            {
                long ms = Math.Min(m, size - a);
                var (xm, ym) = (x.narrow(0, a, ms), y.narrow(0, a, ms));
                micro.Add(new MicroBatch(() => Backward(_loss(_model.call(xm), ym)), ms));
            }
            return sam.step(micro);
        }
        optimizer.zero_grad();
        var loss = Backward(_loss(_model.call(x), y));
        optimizer.step();
        return loss.ToDouble();
    }

    static Tensor Backward(Tensor loss)
    {
        loss.backward();
        return loss;
    }

    void EnsureFinite(Session s, double loss, int epoch)
    {
        if (double.IsFinite(loss)) return;
        // Before any step the learning rate is not to blame: the model's outputs overflow on these data.
        if (s.Log.CompletedSteps == 0)
            throw new NonFiniteException($"{_train.Name}: the loss is {loss} at the initial weights, before any step; the model's outputs overflow " +
                                         "(rescale very large inputs, e.g. standardize them, or compute in float64)");
        throw Diverged(s.Log, $"at step {s.Log.CompletedSteps + 1} (epoch {epoch}): the loss is {loss}");
    }

    void MonitorIfDue(Session s, int epoch, double batchLoss)
    {
        if (s.MonitorData is null || s.Log.CompletedSteps % _o.MonitorEvery != 0) return;
        var rec = Monitor(s.MonitorData, s.Log.CompletedSteps, epoch, batchLoss);
        s.Log.Monitor.Add(rec);
        s.LastLambda = rec.LambdaMax;
        _model.train();
    }

    /// <summary>Checks, averages, evaluates and checkpoints after an epoch; true when training stops after it.</summary>
    bool EndEpoch(Session s, int epoch, double runningLoss, OptimizerHelper stateful)
    {
        // The last step of an epoch can blow the weights up although its loss (taken before the step) was finite.
        if (!WeightsFinite()) throw Diverged(s.Log, $"at step {s.Log.CompletedSteps} (epoch {epoch}): the weights became NaN or infinite");
        if (s.Swa is not null && epoch >= _o.SwaStart) s.Swa.Update(_model);
        EpochRecord rec;
        try { rec = Evaluate(epoch, s); }
        catch (NonFiniteException) { throw Diverged(s.Log, $"after epoch {epoch}: the training loss is not finite"); }
        s.Log.Epochs.Add(rec);
        s.Progress?.Report(new TrainProgress(epoch, s.Plan.Epochs, s.Log.CompletedSteps, s.Plan.StepsPerEpoch, runningLoss, s.LastLambda, rec));
        s.Log.CompletedEpochs = epoch;
        bool reached = _o.StopAtLoss is { } target && rec.TrainLoss < target;
        if (reached) s.Log.StopReason = $"training loss {rec.TrainLoss:G4} < {_o.StopAtLoss} after epoch {epoch}";
        bool last = reached || epoch == s.Plan.Epochs || s.Log.CompletedSteps >= s.Plan.TotalSteps;
        if (OutputFolder is { } dir) Checkpoint(dir, s.Log, stateful, s.Swa, epoch, last);
        return last;
    }

    /// <summary>The SWA average (if any) into the model, the final record, the final files and the <see cref="Stopped"/> call.</summary>
    void Finish(Session s)
    {
        var log = s.Log;
        if (s.Swa is { Count: > 0 } swa)
        {
            swa.CopyTo(_model);
            WeightAverage.RecomputeBatchNorm(_model, _train, _o.EvalBatchSize);
            log.Epochs.Add(Evaluate(log.CompletedEpochs, s));
            log.StopReason = (log.StopReason is null ? "" : log.StopReason + "; ") + $"weights are the SWA average of {swa.Count} epochs";
        }
        log.StopReason ??= _o.Steps > 0 ? $"{_o.Steps} steps" : $"{s.Plan.Epochs} epochs";
        log.Finished = true;
        if (OutputFolder is { } dir)
        {
            Weights.Save(_model, Path.Combine(dir, "model.dat"));
            if (_o.SavePyTorch || _model is TorchScriptModel) Weights.Save(_model, Path.Combine(dir, "model.pt"));
            if (_model is TorchScriptModel archive)
            {
                // What the user's PyTorch code loads: the state_dict under the archive's own names, and the archive itself.
                Weights.Save(_model, Path.Combine(dir, "model.safetensors"));
                archive.SaveArchive(Path.Combine(dir, "model.torchscript.pt"));
            }
            AtomicFile.WriteJson(Path.Combine(dir, StateFile), log);
            WriteLogFiles(dir, log);
        }
        Stopped?.Invoke(log);
    }

    /// <summary>Records why training stopped (the last good checkpoint stays as it is) and makes the exception to throw.</summary>
    DivergenceException Diverged(TrainingLog log, string what)
    {
        log.StopReason = $"diverged {what}";
        string kept = "No checkpoint had been written yet";
        if (OutputFolder is { } dir)
        {
            Directory.CreateDirectory(dir);
            AtomicFile.WriteJson(Path.Combine(dir, StateFile), log);
            if (log.CompletedEpochs > 0) kept = $"The last good checkpoint is {Path.Combine(dir, LastWeights)} (epoch {log.CompletedEpochs})";
        }
        else kept = "The model's weights are those of the diverged step (no output folder, no checkpoint)";
        Stopped?.Invoke(log);
        return new DivergenceException($"training diverged {what}. {kept}; lower the learning rate.");
    }

    bool WeightsFinite()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        return _model.parameters().All(p => isfinite(p).all().ToBoolean());
    }

    MonitorRecord Monitor(Dataset data, long step, int epoch, double batchLoss)
    {
        using var obj = new Objective(_model, _loss, data, new ObjectiveOptions { BatchSize = Math.Max(data.Count, 1) });
        var op = new HessianOperator(obj);
        var lanczos = new LanczosOptions { K = 1, Tolerance = 1e-3, MaxProducts = 200, Seed = step, VerifyResiduals = false };
        var r = Lanczos.Compute(op, lanczos);
        var record = new MonitorRecord(step, epoch, r.Values[0], r.RelativeResiduals[0], batchLoss, r.Products);
        if (!_o.MonitorGgn) return record;
        var g = Lanczos.Compute(new GgnOperator(obj), lanczos);
        return record with { GgnLambdaMax = g.Values[0], GgnRelativeResidual = g.RelativeResiduals[0], Products = r.Products + g.Products };
    }

    EpochRecord Evaluate(int epoch, Session s)
    {
        using var obj = new Objective(_model, _loss, _train, new ObjectiveOptions { BatchSize = _o.EvalBatchSize });
        var tr = obj.Evaluate();
        var te = Test is null ? null : obj.Evaluate(Test);
        double lr = s.Optimizer.ParamGroups.First().LearningRate;
        return new EpochRecord(epoch, s.Log.CompletedSteps, lr, tr.Loss, tr.Accuracy, te?.Loss, te?.Accuracy, s.Clock.Elapsed.TotalSeconds);
    }

    /// <summary>The resume state of an epoch lives in files named after it, so train.json never points at newer or older files.</summary>
    static string StatePath(string dir, string kind, int epoch) => Path.Combine(dir, "resume", $"{kind}-{epoch:D4}{(kind == "weights" ? ".dat" : ".bin")}");

    /// <summary>
    /// Writes the epoch's resume state. The optimizer state is the base optimizer's (SAM keeps none between steps), so the
    /// files of SGD, Adam, SAM and ASAM runs have one format.
    /// </summary>
    void Checkpoint(string dir, TrainingLog log, OptimizerHelper optimizer, WeightAverage? swa, int epoch, bool last)
    {
        // 1. This epoch's resume state under its own names; 2. train.json, atomically, naming the epoch (the commit point);
        // 3. only then the previous epoch's state is deleted. A kill at any moment leaves a consistent pair behind.
        Directory.CreateDirectory(Path.Combine(dir, "resume"));
        Directory.CreateDirectory(Path.Combine(dir, "checkpoints"));
        Weights.Save(_model, StatePath(dir, "weights", epoch));
        SaveAtomically(StatePath(dir, "optimizer", epoch), optimizer.save_state_dict);
        if (swa is not null) SaveAtomically(StatePath(dir, "swa", epoch), swa.Save);
        if (epoch % _o.CheckpointEvery == 0 || last)
        {
            Weights.Save(_model, Path.Combine(dir, "checkpoints", $"epoch-{epoch:D4}.dat"));
            if (_o.SavePyTorch) Weights.Save(_model, Path.Combine(dir, "checkpoints", $"epoch-{epoch:D4}.pt"));
        }
        AtomicFile.WriteJson(Path.Combine(dir, StateFile), log);
        foreach (var old in Directory.EnumerateFiles(Path.Combine(dir, "resume")).Where(f => !Path.GetFileNameWithoutExtension(f).EndsWith($"-{epoch:D4}")))
            File.Delete(old);
        Weights.Save(_model, Path.Combine(dir, LastWeights));
        WriteLogFiles(dir, log);
    }

    static void SaveAtomically(string path, Action<string> save)
    {
        var tmp = AtomicFile.Temporary(Path.GetFullPath(path));
        save(tmp);
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>The log of the run in <paramref name="dir"/> with its state loaded, or null when there is none to continue.</summary>
    TrainingLog? Restore(string dir, OptimizerHelper optimizer, WeightAverage? swa, RunInputs inputs)
    {
        var state = Path.Combine(dir, StateFile);
        if (!File.Exists(state)) return null;
        TrainingLog log;
        try { log = JsonSerializer.Deserialize<TrainingLog>(File.ReadAllText(state), AtomicFile.Json) ?? throw new JsonException("empty"); }
        catch (JsonException e) { throw new ValleyException($"{state}: cannot resume, the training state is unreadable ({e.Message})", e); }
        if (log.Model != ModelName) throw new ValleyException($"{state} is a run of {log.Model}, not {ModelName}: it cannot be resumed with another model");
        EnsureSameOptions(log.Options, dir);
        if (!inputs.SameAs(log.Inputs))
            throw new ValleyException($"the run in {dir} was trained from other inputs ({inputs.DifferencesFrom(log.Inputs)}) and cannot be resumed; train into another folder to start afresh");
        log = log with { Options = _o };
        if (log.CompletedEpochs == 0) return null;
        if (log.Finished && (_o.Steps > log.CompletedSteps || _o.Epochs > log.CompletedEpochs)) log.Finished = false;
        int done = log.CompletedEpochs;
        if (!File.Exists(StatePath(dir, "weights", done)) || !File.Exists(StatePath(dir, "optimizer", done)))
            throw new ValleyException($"{dir} names epoch {done} but its resume files in {Path.Combine(dir, "resume")} are missing");
        Weights.Load(_model, StatePath(dir, "weights", done));
        optimizer.load_state_dict(StatePath(dir, "optimizer", done));
        if (swa is not null && File.Exists(StatePath(dir, "swa", done))) swa.Load(StatePath(dir, "swa", done));
        return log;
    }

    /// <summary>
    /// A resumed run keeps the options it started with; only its length (Epochs, Steps, StopAtLoss) may change. The first
    /// option that differs is named as the argument at fault.
    /// </summary>
    void EnsureSameOptions(TrainOptions earlier, string dir)
    {
        var lengthOnly = earlier with { Epochs = _o.Epochs, Steps = _o.Steps, StopAtLoss = _o.StopAtLoss };
        if (lengthOnly == _o) return;
        foreach (var p in typeof(TrainOptions).GetProperties().Where(p => p.CanWrite))
            if (!Equals(p.GetValue(lengthOnly), p.GetValue(_o)))
                throw new ArgumentException($"the run in {dir} was started with {Show(p.GetValue(earlier))}, and a resumed run keeps its options " +
                                            $"(only the length of training may change); now {Show(p.GetValue(_o))}", p.Name);
        throw new ValleyException($"the options differ from those of the run in {dir}, which cannot be resumed with them");
    }

    static string Show(object? v) => v switch
    {
        null => "none",
        Enum e => JsonNamingPolicy.SnakeCaseLower.ConvertName(e.ToString()),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => v.ToString() ?? "",
    };

    static void WriteLogFiles(string dir, TrainingLog log)
    {
        Csv.Write(Path.Combine(dir, "log.csv"), ["epoch", "step", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"],
            log.Epochs.Select(e => new object[] { e.Epoch, e.Step, e.LearningRate, e.TrainLoss, (object?)e.TrainAccuracy ?? "", (object?)e.TestLoss ?? "", (object?)e.TestAccuracy ?? "", e.Seconds }));
        if (log.Monitor.Count > 0 && log.Monitor.Any(m => m.GgnLambdaMax is not null))
            Csv.Write(Path.Combine(dir, "monitor.csv"), ["step", "epoch", "lambda_max", "relative_residual", "batch_loss", "products", "ggn_lambda_max", "ggn_relative_residual"],
                log.Monitor.Select(m => new object[] { m.Step, m.Epoch, m.LambdaMax, m.RelativeResidual, m.BatchLoss, m.Products, (object?)m.GgnLambdaMax ?? "", (object?)m.GgnRelativeResidual ?? "" }));
        else if (log.Monitor.Count > 0)
            Csv.Write(Path.Combine(dir, "monitor.csv"), ["step", "epoch", "lambda_max", "relative_residual", "batch_loss", "products"],
                log.Monitor.Select(m => new object[] { m.Step, m.Epoch, m.LambdaMax, m.RelativeResidual, m.BatchLoss, m.Products }));
    }
}
